"""FPGA platform descriptions as data, and the resource budget of one design on a platform.

A :class:`Platform` is what the board offers (DSP slices, BRAM/URAM blocks, off-chip channels, clock) plus this
model's *compute-core template*: ``count`` identical cores, each a processing-element array of ``d1 x d2 x d3`` MACs
(``d1 * d2`` parallel lanes, each a ``d3``-wide dot-product unit with initiation interval 1), a scratchpad with a
number of ports, and special-function units (SFUs).

Shipped descriptions live in ``platforms/*.toml`` (``u280``, ``vpk180``); :func:`load_platform` accepts one of those
names or the path of a user's TOML file with the same tables (see ``platforms/u280.toml`` for every field).
Every error names the file and the field.

A :class:`ResourceBudget` caps what one *design* may use (so a model can be compared with a real build of a given
size); :meth:`Platform.design` resolves platform + budget into a :class:`Design` with the derived numbers the cost
model uses. Asking for more than the platform has raises :class:`~slimsplit.errors.ResourceLimitError` naming the
resource.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimsplit.errors import ConfigError, ResourceLimitError
from slimsplit.server.backends.fpga.tasks import DType

PLATFORM_DIR = Path(__file__).resolve().parent / "platforms"


@dataclass(frozen=True)
class CoreSpec:
    """One compute core of the template (all cores are identical)."""

    count: int
    pe: tuple[int, int, int]  # d1, d2, d3 (d3 = vector width along the reduction)
    scratchpad_kib: int
    scratchpad_ports: int
    port_bytes: int
    sfu: int
    pipeline_depth: int

    @property
    def lanes(self) -> int:
        """Dot-product lanes per core (``d1 * d2``)."""
        return self.pe[0] * self.pe[1]

    @property
    def vector_width(self) -> int:
        return self.pe[2]

    @property
    def macs(self) -> int:
        return self.pe[0] * self.pe[1] * self.pe[2]


@dataclass(frozen=True)
class OffChipSpec:
    kind: str
    channels: int
    channel_gbps: float  # GB/s (1e9 bytes/s) per channel
    capacity_gib: float
    latency_ns: float
    port_bytes: int  # data width of one design port, bytes per cycle


@dataclass(frozen=True)
class Platform:
    name: str
    description: str
    clock_mhz: float
    reconfig_ns: float
    dsp: int
    bram36: int
    bram36_bytes: int
    uram: int
    uram_bytes: int
    core: CoreSpec
    offchip: OffChipSpec
    dsp_macs: Mapping[DType, int] = field(default_factory=dict)
    source: str = "<builtin>"

    @property
    def onchip_bytes(self) -> int:
        return self.bram36 * self.bram36_bytes + self.uram * self.uram_bytes

    def macs_per_dsp(self, weight_dtype: DType) -> int:
        try:
            return self.dsp_macs[weight_dtype]
        except KeyError:
            raise ConfigError(
                f"platform {self.name!r} has no [dsp_macs] entry for {weight_dtype.value} weights",
                field=f"dsp_macs.{weight_dtype.value}",
            ) from None

    def design(self, budget: ResourceBudget | None = None, weight_dtype: DType = DType.INT16) -> Design:
        """Resolve a budget on this platform into the numbers the cost model uses."""
        return Design.resolve(self, budget or ResourceBudget(), weight_dtype)

    def describe(self) -> dict[str, str]:
        return {
            "platform": self.name,
            "platform_description": self.description,
            "clock_mhz": f"{self.clock_mhz:g}",
            "dsp": str(self.dsp),
            "bram36": str(self.bram36),
            "uram": str(self.uram),
            "offchip": f"{self.offchip.kind} {self.offchip.channels} x {self.offchip.channel_gbps:g} GB/s",
            "cores": f"{self.core.count} x PE {'x'.join(str(d) for d in self.core.pe)}",
        }


@dataclass(frozen=True)
class ResourceBudget:
    """What one design may use; ``None`` means "all the platform has".

    ``intermediate_fraction`` is the share of the design's on-chip memory that holds intermediate tensors between
    execution segments; the rest holds working buffers (line buffers, FIFOs, weight tiles).
    """

    dsp: int | None = None
    bram36: int | None = None
    uram: int | None = None
    offchip_channels: int | None = None
    offchip_port_bytes: int | None = None  # data width of the design's off-chip ports (bytes per cycle)
    intermediate_fraction: float = 0.5


@dataclass(frozen=True)
class Design:
    """A platform with a budget applied: every derived number the cost model needs, in cycles and bytes."""

    platform: Platform
    weight_dtype: DType
    dsp: int
    bram36: int
    uram: int
    offchip_channels: int
    macs: int  # MAC units the DSP budget buys for this weight type
    vector_width: int  # d3
    cores: int  # cores the MAC budget fills (at least one, possibly partial)
    sfu_units: int  # special-function units, each ``vector_width`` lanes
    onchip_bytes: int
    intermediate_bytes: int
    working_bytes: int
    offchip_bytes_per_cycle: float
    offchip_latency_cycles: int
    reconfig_cycles: int
    pipeline_depth: int
    scratchpad_bytes_per_cycle: int  # all cores' scratchpad ports together

    @property
    def clock_hz(self) -> float:
        return self.platform.clock_mhz * 1e6

    def cycles_to_ms(self, cycles: int | float) -> float:
        return float(cycles) / self.clock_hz * 1e3

    @classmethod
    def resolve(cls, platform: Platform, budget: ResourceBudget, weight_dtype: DType) -> Design:
        def pick(name: str, asked: int | None, available: int, lo: int = 0) -> int:
            if asked is None:
                return available
            if asked > available:
                raise ResourceLimitError(
                    f"the design budget asks for {asked} {name} but platform {platform.name!r} has only {available}",
                    resource=name,
                    requested=asked,
                    available=available,
                )
            if asked < lo:
                raise ConfigError(f"budget {name} must be at least {lo}, got {asked}", field=f"budget.{name}")
            return asked

        core = platform.core
        mpd = platform.macs_per_dsp(weight_dtype)
        template_dsp = math.ceil(core.count * core.macs / mpd)
        dsp = pick("DSP", budget.dsp, min(platform.dsp, template_dsp), lo=1)
        bram = pick("BRAM36", budget.bram36, platform.bram36)
        uram = pick("URAM", budget.uram, platform.uram)
        channels = pick("off-chip channels", budget.offchip_channels, platform.offchip.channels, lo=1)
        port_bytes = pick("off-chip port bytes", budget.offchip_port_bytes, platform.offchip.port_bytes, lo=1)
        if not 0.0 <= budget.intermediate_fraction < 1.0:
            raise ConfigError(
                f"budget intermediate_fraction must be in [0, 1), got {budget.intermediate_fraction}",
                field="budget.intermediate_fraction",
            )
        onchip = bram * platform.bram36_bytes + uram * platform.uram_bytes
        if onchip <= 0:
            raise ResourceLimitError(
                "the design budget leaves no on-chip memory (BRAM36 = 0 and URAM = 0)", resource="on-chip memory"
            )
        macs = dsp * mpd
        cores = max(1, min(core.count, math.ceil(macs / core.macs)))
        clock_ghz = platform.clock_mhz / 1e3
        per_channel = min(float(port_bytes), platform.offchip.channel_gbps / clock_ghz)
        intermediate = int(onchip * budget.intermediate_fraction)
        return cls(
            platform=platform,
            weight_dtype=weight_dtype,
            dsp=dsp,
            bram36=bram,
            uram=uram,
            offchip_channels=channels,
            macs=macs,
            vector_width=core.vector_width,
            cores=cores,
            sfu_units=cores * core.sfu,
            onchip_bytes=onchip,
            intermediate_bytes=intermediate,
            working_bytes=onchip - intermediate,
            offchip_bytes_per_cycle=channels * per_channel,
            offchip_latency_cycles=math.ceil(platform.offchip.latency_ns * clock_ghz),
            reconfig_cycles=math.ceil(platform.reconfig_ns * clock_ghz),
            pipeline_depth=core.pipeline_depth,
            scratchpad_bytes_per_cycle=cores * core.scratchpad_ports * core.port_bytes,
        )


# ---------------------------------------------------------------------------------------------- loading


def shipped_platforms() -> tuple[str, ...]:
    """Names of the platform descriptions shipped with slimsplit."""
    return tuple(sorted(p.stem for p in PLATFORM_DIR.glob("*.toml")))


def load_platform(name_or_path: str | Path) -> Platform:
    """Load a shipped platform by name (``"u280"``, ``"vpk180"``) or a user's TOML file by path."""
    text_name = str(name_or_path)
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        shipped = PLATFORM_DIR / f"{text_name.lower()}.toml"
        if not shipped.is_file():
            raise ConfigError(
                f"unknown FPGA platform {text_name!r}; shipped platforms: {', '.join(shipped_platforms())} "
                "(or give the path of a platform TOML file)",
                field="platform",
            )
        path = shipped
    if not path.is_file():
        raise ConfigError(f"platform file {path} does not exist", field="platform", path=str(path))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", path=str(path)) from exc
    return parse_platform(raw, source=str(path))


def _table(raw: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: missing table [{key}]", field=key)
    return value


def _num(table: Mapping[str, Any], key: str, where: str, source: str, *, integer: bool, lo: float) -> Any:
    if key not in table:
        raise ConfigError(f"{source}: missing field {where}.{key}", field=f"{where}.{key}")
    value = table[key]
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)) or value < lo:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{source}: {where}.{key} must be {kind} >= {lo:g}, got {value!r}", field=f"{where}.{key}")
    return value


def _int(table: Mapping[str, Any], key: str, where: str, source: str, lo: int = 1) -> int:
    return int(_num(table, key, where, source, integer=True, lo=lo))


def _float(table: Mapping[str, Any], key: str, where: str, source: str, lo: float = 0.0) -> float:
    return float(_num(table, key, where, source, integer=False, lo=lo))


def _text(table: Mapping[str, Any], key: str, where: str, source: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {where}.{key} must be a non-empty string", field=f"{where}.{key}")
    return value


def parse_platform(raw: Mapping[str, Any], source: str = "<platform>") -> Platform:
    """Validate a parsed platform TOML document (see ``platforms/u280.toml``)."""
    plat = _table(raw, "platform", source)
    res = _table(raw, "resources", source)
    core_t = _table(raw, "core", source)
    off_t = _table(raw, "offchip", source)
    macs_t = _table(raw, "dsp_macs", source)

    pe_raw = core_t.get("pe")
    if (
        not isinstance(pe_raw, list)
        or len(pe_raw) != 3
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in pe_raw)
    ):
        raise ConfigError(f"{source}: core.pe must be a list of three positive integers [d1, d2, d3]", field="core.pe")
    core = CoreSpec(
        count=_int(core_t, "count", "core", source),
        pe=(pe_raw[0], pe_raw[1], pe_raw[2]),
        scratchpad_kib=_int(core_t, "scratchpad_kib", "core", source),
        scratchpad_ports=_int(core_t, "scratchpad_ports", "core", source),
        port_bytes=_int(core_t, "port_bytes", "core", source),
        sfu=_int(core_t, "sfu", "core", source),
        pipeline_depth=_int(core_t, "pipeline_depth", "core", source, lo=0),
    )
    offchip = OffChipSpec(
        kind=_text(off_t, "kind", "offchip", source, default="DRAM"),
        channels=_int(off_t, "channels", "offchip", source),
        channel_gbps=_float(off_t, "channel_gbps", "offchip", source, lo=1e-9),
        capacity_gib=_float(off_t, "capacity_gib", "offchip", source, lo=1e-9),
        latency_ns=_float(off_t, "latency_ns", "offchip", source),
        port_bytes=_int(off_t, "port_bytes", "offchip", source),
    )
    dsp_macs: dict[DType, int] = {}
    for key in macs_t:
        try:
            dtype = DType(key)
        except ValueError:
            raise ConfigError(
                f"{source}: dsp_macs.{key} is not a weight type; use {', '.join(d.value for d in DType)}",
                field=f"dsp_macs.{key}",
            ) from None
        dsp_macs[dtype] = _int(macs_t, key, "dsp_macs", source)
    if DType.INT16 not in dsp_macs:
        raise ConfigError(f"{source}: missing field dsp_macs.int16", field="dsp_macs.int16")

    platform = Platform(
        name=_text(plat, "name", "platform", source),
        description=_text(plat, "description", "platform", source, default=str(plat.get("name", "?"))),
        clock_mhz=_float(plat, "clock_mhz", "platform", source, lo=1e-6),
        reconfig_ns=_float(plat, "reconfig_ns", "platform", source),
        dsp=_int(res, "dsp", "resources", source),
        bram36=_int(res, "bram36", "resources", source, lo=0),
        bram36_bytes=_int(res, "bram36_bytes", "resources", source),
        uram=_int(res, "uram", "resources", source, lo=0),
        uram_bytes=_int(res, "uram_bytes", "resources", source),
        core=core,
        offchip=offchip,
        dsp_macs=dsp_macs,
        source=source,
    )
    # Cross-field checks: the core template must fit the device it describes.
    template_dsp = math.ceil(core.count * core.macs / dsp_macs[DType.INT16])
    if template_dsp > platform.dsp:
        raise ConfigError(
            f"{source}: the core template ({core.count} cores x PE {core.pe}) needs {template_dsp} DSPs for int16 "
            f"but resources.dsp is {platform.dsp}",
            field="core.count",
        )
    scratch = core.count * core.scratchpad_kib * 1024
    if scratch > platform.onchip_bytes:
        raise ConfigError(
            f"{source}: {core.count} scratchpads of {core.scratchpad_kib} KiB need {scratch} bytes but BRAM + URAM "
            f"hold only {platform.onchip_bytes}",
            field="core.scratchpad_kib",
        )
    return platform
