"""Configuration of the FPGA backends (a frozen dataclass with defaults; the server fills it from flags/TOML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slimsplit.errors import ConfigError
from slimsplit.server.backends.fpga.platform import ResourceBudget

CALIBRATION_SOURCES = ("auto", "encoder", "synthetic")


@dataclass(frozen=True)
class FpgaConfig:
    """``platform``: a shipped platform name (``u280``, ``vpk180``) or a TOML path. ``budget``: the design's
    resource caps (default: the whole platform). ``weight_bits``: 8 or 16 (4 works, not recommended).
    ``calibration``: where activation ranges come from — ``encoder`` runs the bundle's encoder on the shipped
    sample images, ``synthetic`` uses standard-normal features, ``auto`` tries the first and falls back."""

    platform: str = "u280"
    budget: ResourceBudget = field(default_factory=ResourceBudget)
    weight_bits: int = 8
    calibration: str = "auto"
    calibration_samples: int = 64
    samples_path: Path | None = None
    headroom: float = 1.25
    max_group: int = 12
    max_batch: int = 64  # device buffers are sized for this many frames (grown on demand)

    def __post_init__(self) -> None:
        if self.weight_bits not in (4, 8, 16):
            raise ConfigError(f"fpga weight_bits must be 4, 8 or 16, got {self.weight_bits}", field="weight_bits")
        if self.calibration not in CALIBRATION_SOURCES:
            raise ConfigError(
                f"fpga calibration must be one of {', '.join(CALIBRATION_SOURCES)}, got {self.calibration!r}",
                field="calibration",
            )
        if self.calibration_samples < 1:
            raise ConfigError("fpga calibration_samples must be >= 1", field="calibration_samples")
        if not self.headroom >= 1.0:
            raise ConfigError(f"fpga headroom must be >= 1, got {self.headroom}", field="headroom")
        if self.max_group < 1 or self.max_batch < 1:
            raise ConfigError("fpga max_group and max_batch must be >= 1", field="max_group")
