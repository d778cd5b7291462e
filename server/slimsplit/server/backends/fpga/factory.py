"""``create_backend(name, config)``: the hook the server's backend registry calls for ``fpga-emu`` and ``fpga``.

``config.options`` (from ``--backend-option``/TOML, passed through untouched) may hold::

    platform = "u280"            # or "vpk180", or a path to a platform TOML file
    weight_bits = 8              # 8 or 16 (4 also works)
    calibration = "auto"         # auto | encoder | synthetic
    calibration_samples = 64
    samples_path = "..."         # .npz with uint8 NCHW images (default: the shipped samples)
    headroom = 1.25
    max_group = 12               # longest dataflow / task-parallel group the scheduler considers
    max_batch = 64               # device buffers sized for this many frames (fpga only; grown on demand)
    budget_dsp = 2048            # design budget caps (default: the whole platform)
    budget_bram36 = 1024
    budget_uram = 0
    budget_offchip_channels = 4
    budget_intermediate_fraction = 0.5
    xclbin = "tail.xclbin"       # fpga only (required)
    device_index = 0             # fpga only
    kernel_name = "slimsplit_tail"  # fpga only
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimsplit.errors import ConfigError
from slimsplit.server.backends.base import Backend
from slimsplit.server.backends.fpga.backend import FpgaBackend, FpgaEmuBackend
from slimsplit.server.backends.fpga.config import FpgaConfig
from slimsplit.server.backends.fpga.platform import ResourceBudget
from slimsplit.server.backends.fpga.xrt import KERNEL_NAME

if TYPE_CHECKING:
    from slimsplit.server.config import BackendConfig

_CONFIG_KEYS = {
    "platform": str,
    "weight_bits": int,
    "calibration": str,
    "calibration_samples": int,
    "samples_path": Path,
    "headroom": float,
    "max_group": int,
    "max_batch": int,
}
_BUDGET_KEYS = {
    "budget_dsp": ("dsp", int),
    "budget_bram36": ("bram36", int),
    "budget_uram": ("uram", int),
    "budget_offchip_channels": ("offchip_channels", int),
    "budget_intermediate_fraction": ("intermediate_fraction", float),
}
_DEVICE_KEYS = {"xclbin", "device_index", "kernel_name"}


def _coerce(key: str, value: Any, kind: type) -> Any:
    try:
        if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"backend option {key!r} must be {kind.__name__}, got {value!r}", key=f"backend.options.{key}"
        ) from None


def fpga_config_from_options(options: Mapping[str, Any]) -> FpgaConfig:
    """Build an :class:`FpgaConfig` from flat backend options (unknown keys are an error)."""
    unknown = sorted(set(options) - set(_CONFIG_KEYS) - set(_BUDGET_KEYS) - _DEVICE_KEYS)
    if unknown:
        known = sorted([*_CONFIG_KEYS, *_BUDGET_KEYS, *_DEVICE_KEYS])
        raise ConfigError(
            f"unknown FPGA backend option(s) {', '.join(unknown)}; known: {', '.join(known)}",
            key="backend.options",
        )
    kwargs = {k: _coerce(k, options[k], kind) for k, kind in _CONFIG_KEYS.items() if k in options}
    budget = {field: _coerce(k, options[k], kind) for k, (field, kind) in _BUDGET_KEYS.items() if k in options}
    return FpgaConfig(budget=ResourceBudget(**budget), **kwargs)


def create_backend(name: str, config: BackendConfig) -> Backend:
    """``fpga-emu`` -> :class:`FpgaEmuBackend`; ``fpga`` -> :class:`FpgaBackend` (needs option ``xclbin``)."""
    options: Mapping[str, Any] = config.options
    fpga_config = fpga_config_from_options(options)
    if name == "fpga-emu":
        extra = sorted(_DEVICE_KEYS & set(options))
        if extra:
            raise ConfigError(
                f"backend option(s) {', '.join(extra)} only apply to --backend fpga", key="backend.options"
            )
        return FpgaEmuBackend(fpga_config)
    if name == "fpga":
        if "xclbin" not in options:
            raise ConfigError(
                "--backend fpga needs the option xclbin=PATH (the bitstream with the slimsplit_tail kernel); "
                "without a board use --backend fpga-emu",
                key="backend.options.xclbin",
            )
        return FpgaBackend(
            Path(str(options["xclbin"])),
            fpga_config,
            device_index=_coerce("device_index", options.get("device_index", 0), int),
            kernel_name=str(options.get("kernel_name", KERNEL_NAME)),
        )
    raise ConfigError(f"the FPGA package has no backend {name!r} (use fpga-emu or fpga)", key="backend.name")
