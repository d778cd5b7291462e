"""Training configuration: explicit dataclasses with defaults (the defaults reproduce the shipped bundle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slimsplit.server.models import BottleneckConfig


@dataclass(frozen=True)
class OptimConfig:
    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 5e-4


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained bundle."""

    out_dir: Path = Path("runs/default")
    bundle_dir: Path | None = None  # where to write the exported bundle (default: <out_dir>/bundle)
    data: str = "fashion-mnist"  # or a path to an ImageFolder-layout directory
    data_dir: Path = Path("/usr/share/datasets/fashion-mnist")
    backbone: str = "resnet_small"
    split_after: str = "stage1"
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    teacher: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=8, lr=3e-3))
    student: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=12, lr=2e-3))
    # student loss weights: head distillation (MSE to the teacher's split features) and logit distillation
    feature_weight: float = 1.0
    kd_temperature: float = 2.0
    widths_per_step: int = 3  # sandwich rule: widest + narrowest + (n-2) random widths per step
    recalibration_images: int = 4096  # batch-norm recalibration per width
    train_limit: int | None = None  # use only the first N training images (smoke tests)
    test_limit: int | None = None  # evaluate on the first N test images (smoke tests)
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    bundle_name: str = "fashion64-resnet"
    bundle_version: str = "2"
    show_progress: bool = True
