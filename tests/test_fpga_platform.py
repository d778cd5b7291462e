"""FPGA platform descriptions: shipped TOML files, user TOML files, validation errors and design budgets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from slimsplit.errors import ConfigError, ResourceLimitError
from slimsplit.server.backends.fpga import DType, ResourceBudget, load_platform, shipped_platforms
from slimsplit.server.backends.fpga.platform import PLATFORM_DIR

U280_TOML = (PLATFORM_DIR / "u280.toml").read_text(encoding="utf-8")


def test_shipped_platforms_load_with_the_documented_u280_figures() -> None:
    assert {"u280", "vpk180"} <= set(shipped_platforms())
    u280 = load_platform("u280")
    assert (u280.dsp, u280.bram36, u280.uram) == (9024, 2016, 960)
    assert u280.bram36_bytes == 4608 and u280.uram_bytes == 36864  # 4.5 KB and 36 KB
    assert u280.offchip.channels == 32 and u280.offchip.channel_gbps == pytest.approx(14.375)
    assert u280.clock_mhz == 300.0
    assert u280.core.vector_width == 16
    vpk = load_platform("VPK180")  # names are case-insensitive
    assert vpk.name == "vpk180" and vpk.dsp > u280.dsp


def test_design_derives_cycle_figures_from_the_platform() -> None:
    d = load_platform("u280").design()
    assert d.macs == 8 * 8 * 8 * 16  # the core template, one int16 MAC per DSP
    assert d.dsp == 8192
    assert d.onchip_bytes == 2016 * 4608 + 960 * 36864
    assert d.intermediate_bytes + d.working_bytes == d.onchip_bytes
    assert d.reconfig_cycles == math.ceil(15 * 0.3)  # 15 ns at 300 MHz
    assert d.offchip_latency_cycles == math.ceil(250 * 0.3)
    # per channel: min(32-byte port, 14.375 GB/s / 0.3 GHz = 47.9 B) = 32 B per cycle
    assert d.offchip_bytes_per_cycle == pytest.approx(32 * 32)
    assert d.cycles_to_ms(300_000) == pytest.approx(1.0)


def test_budget_below_the_platform_scales_the_design() -> None:
    plat = load_platform("u280")
    d = plat.design(ResourceBudget(dsp=439, bram36=202, uram=0, offchip_channels=4))
    assert d.macs == 439 and d.cores == 1
    assert d.onchip_bytes == 202 * 4608
    assert d.offchip_bytes_per_cycle == pytest.approx(4 * 32)
    int4 = plat.design(ResourceBudget(dsp=100), DType.INT4)
    assert int4.macs == 200  # two 4-bit weights per DSP


@pytest.mark.parametrize(
    ("budget", "resource"),
    [
        (ResourceBudget(dsp=10_000), "DSP"),
        (ResourceBudget(bram36=5000), "BRAM36"),
        (ResourceBudget(uram=961), "URAM"),
        (ResourceBudget(offchip_channels=33), "off-chip channels"),
    ],
)
def test_budget_above_the_platform_names_the_resource(budget: ResourceBudget, resource: str) -> None:
    with pytest.raises(ResourceLimitError, match=resource) as info:
        load_platform("u280").design(budget)
    assert info.value.context["resource"] == resource


def test_budget_without_onchip_memory_is_a_resource_error() -> None:
    with pytest.raises(ResourceLimitError, match="on-chip memory"):
        load_platform("u280").design(ResourceBudget(bram36=0, uram=0))


def test_user_toml_loads_by_path(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    text = U280_TOML.replace('name = "u280"', 'name = "small"').replace("count = 8", "count = 2")
    path.write_text(text.replace("dsp = 9024", "dsp = 2048"), encoding="utf-8")
    plat = load_platform(path)
    assert plat.name == "small" and plat.dsp == 2048 and plat.core.count == 2
    assert plat.source == str(path)
    assert plat.design().macs == 2 * 8 * 8 * 16


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("dsp = 9024", "dsp = -3", "resources.dsp"),
        ("dsp = 9024", 'dsp = "many"', "resources.dsp"),
        ("clock_mhz = 300.0", "", "platform.clock_mhz"),
        ("pe = [8, 8, 16]", "pe = [8, 8]", "core.pe"),
        ("channels = 32", "channels = 0", "offchip.channels"),
        ("int8 = 1", "int3 = 1", "dsp_macs.int3"),
        ("dsp = 9024", "dsp = 1000", "core.count"),  # 8 cores x 1024 MACs no longer fit
        ("scratchpad_kib = 512", "scratchpad_kib = 9000000", "core.scratchpad_kib"),
    ],
)
def test_invalid_toml_names_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in U280_TOML
    path = tmp_path / "bad.toml"
    path.write_text(U280_TOML.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_platform(path)
    assert info.value.context["field"] == field
    assert str(path) in str(info.value)


def test_missing_table_unknown_name_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown FPGA platform 'zcu999'.*u280"):
        load_platform("zcu999")
    with pytest.raises(ConfigError, match="does not exist"):
        load_platform(tmp_path / "absent.toml")
    no_offchip = tmp_path / "no_offchip.toml"
    no_offchip.write_text(U280_TOML.split("[offchip]")[0], encoding="utf-8")
    with pytest.raises(ConfigError, match=r"missing table \[offchip\]"):
        load_platform(no_offchip)
    broken = tmp_path / "broken.toml"
    broken.write_text("[platform\nname=", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_platform(broken)
