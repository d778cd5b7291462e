"""The ``fpga-emu`` and ``fpga`` backends behind :class:`~slimsplit.server.backends.base.Backend`.

Both compile every tail of a bundle (one per width; modes of the same width share it), calibrate it to fixed point
and check that it fits the platform's resource budget (a :class:`~slimsplit.errors.ResourceLimitError` names the
resource otherwise). ``fpga-emu`` then executes in the numpy emulator and reports the InTAR schedule's modelled
cycles; ``fpga`` runs the same quantized tail on a board through XRT and reports the kernel's cycle counter.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle
from slimsplit.errors import BackendError, SlimsplitError
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.backends.fpga.calibration import calibration_features
from slimsplit.server.backends.fpga.config import FpgaConfig
from slimsplit.server.backends.fpga.emulator import FixedPointProgram
from slimsplit.server.backends.fpga.graph_ir import CompiledTail
from slimsplit.server.backends.fpga.lowering import to_task_graph, weight_dtype
from slimsplit.server.backends.fpga.onnx_import import compile_onnx
from slimsplit.server.backends.fpga.platform import Design, Platform, load_platform
from slimsplit.server.backends.fpga.scheduler import Schedule, schedule_intar
from slimsplit.server.backends.fpga.xrt import KERNEL_NAME, DeviceTail, XrtDriver


@dataclass(frozen=True)
class PreparedTail:
    """One tail file compiled, quantized and checked against the design."""

    path: str
    width: int
    tail: CompiledTail
    program: FixedPointProgram
    calibration: str
    schedule_b1: Schedule


def prepare_bundle(bundle: Bundle, config: FpgaConfig, design: Design) -> dict[str, PreparedTail]:
    """Compile and calibrate every tail of ``bundle``; keyed by the tail path relative to the bundle."""
    prepared: dict[str, PreparedTail] = {}
    for mode in bundle.manifest.modes:
        if mode.tail in prepared:
            continue
        tail = compile_onnx(bundle.tail_path(mode), name=f"{bundle.manifest.name}/{mode.tail}")
        expected = bundle.manifest.feature.shape(mode.width)
        if tuple(tail.input_shape) != tuple(expected):
            raise BackendError(
                f"{mode.tail}: the tail takes features {tail.input_shape} but mode {mode.name!r} sends {expected}"
            )
        feats, source = calibration_features(bundle, mode.width, tuple(tail.input_shape), config)
        program = FixedPointProgram.calibrate(tail, feats, config.weight_bits, config.headroom)
        graph = to_task_graph(tail, batch=1, weight_bits=config.weight_bits)
        sched = schedule_intar(graph, design, max_group=config.max_group)  # raises ResourceLimitError
        prepared[mode.tail] = PreparedTail(mode.tail, mode.width, tail, program, source, sched)
    return prepared


def _check_features(features: npt.NDArray[np.float32], tail: CompiledTail, mode: str) -> npt.NDArray[np.float32]:
    arr = np.asarray(features)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(tail.input_shape) or arr.shape[0] < 1:
        raise BackendError(
            f"mode {mode!r} expects features [N, {', '.join(map(str, tail.input_shape))}], got {arr.shape}",
            mode=mode,
        )
    if not np.all(np.isfinite(arr)):
        raise BackendError(f"mode {mode!r}: features contain NaN or infinity", mode=mode)
    return arr.astype(np.float32, copy=False)


class _ModelledLatency:
    """InTAR schedules per (tail, batch size), computed on first use (the runner's only mutable state)."""

    def __init__(self, design: Design, config: FpgaConfig) -> None:
        self.design = design
        self.config = config
        self._cache: dict[tuple[str, int], Schedule] = {}
        self._lock = threading.Lock()

    def schedule(self, prepared: PreparedTail, batch: int) -> Schedule:
        key = (prepared.path, batch)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        if batch == 1:
            sched = prepared.schedule_b1
        else:
            graph = to_task_graph(prepared.tail, batch=batch, weight_bits=self.config.weight_bits)
            sched = schedule_intar(graph, self.design, max_group=self.config.max_group)
        with self._lock:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = sched
        return sched


def _design(config: FpgaConfig) -> tuple[Platform, Design]:
    platform = load_platform(config.platform)
    return platform, platform.design(config.budget, weight_dtype(config.weight_bits))


# ---------------------------------------------------------------------------------------------- fpga-emu


class FpgaEmuRunner(TailRunner):
    """Runs tails in the fixed-point emulator; thread-safe (the schedule cache is locked)."""

    inline_safe = True  # numpy on the CPU; the batcher still measures it and inlines only if it is cheap

    def __init__(self, bundle: Bundle, config: FpgaConfig, design: Design, prepared: dict[str, PreparedTail]) -> None:
        self.bundle = bundle
        self.config = config
        self.design = design
        self.prepared = prepared
        self._latency = _ModelledLatency(design, config)

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        spec = self.bundle.manifest.mode(mode)  # raises UnknownMode
        prep = self.prepared[spec.tail]
        x = _check_features(features, prep.tail, mode)
        result = prep.program.run(x)
        sched = self._latency.schedule(prep, int(x.shape[0]))
        return TailOutput(
            logits=result.logits,
            device_cycles=sched.total_cycles,
            device_ms=sched.latency_ms,
            extra={
                "offchip_bytes": float(sched.offchip_bytes),
                "saturated_fraction": result.saturated_fraction,
                "reconfigurations": float(sched.reconfigurations),
                "dsp": float(sched.dsp),
            },
        )

    def schedule(self, mode: str, batch: int = 1) -> Schedule:
        """The InTAR schedule the latency figures come from (for reports)."""
        spec = self.bundle.manifest.mode(mode)
        return self._latency.schedule(self.prepared[spec.tail], batch)


class FpgaEmuBackend(Backend):
    """``--backend fpga-emu``: InTAR-scheduled fixed-point emulation of the tails (no board needed)."""

    name = "fpga-emu"

    def __init__(self, config: FpgaConfig | None = None) -> None:
        self.config = config or FpgaConfig()
        self.platform, self.design = _design(self.config)

    def load(self, bundle: Bundle) -> FpgaEmuRunner:
        try:
            prepared = prepare_bundle(bundle, self.config, self.design)
        except SlimsplitError:
            raise
        except Exception as exc:  # numpy/onnx failures inside the compiler
            raise BackendError(f"fpga-emu could not prepare bundle {bundle.root}: {exc}") from exc
        return FpgaEmuRunner(bundle, self.config, self.design, prepared)

    def describe(self) -> dict[str, str]:
        d = self.design
        return {
            "backend": self.name,
            "execution": "fixed-point emulation in numpy (int16 activations); latency from the InTAR cost model",
            **self.platform.describe(),
            "budget_dsp": str(d.dsp),
            "budget_bram36": str(d.bram36),
            "budget_uram": str(d.uram),
            "weight_bits": str(self.config.weight_bits),
        }


# ---------------------------------------------------------------------------------------------- fpga (XRT)


class FpgaRunner(TailRunner):
    """Runs tails on a board through XRT; calls are serialised per tail by :class:`DeviceTail`."""

    def __init__(
        self,
        bundle: Bundle,
        design: Design,
        driver: XrtDriver,
        prepared: dict[str, PreparedTail],
        tails: dict[str, DeviceTail],
    ) -> None:
        self.bundle = bundle
        self.design = design
        self.driver = driver
        self.prepared = prepared
        self.tails = tails

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        spec = self.bundle.manifest.mode(mode)
        prep = self.prepared[spec.tail]
        x = _check_features(features, prep.tail, mode)
        q = prep.program.quantize_input(x)
        t0 = time.perf_counter()
        q_out, cycles = self.tails[spec.tail].run(q)
        host_ms = (time.perf_counter() - t0) * 1e3
        return TailOutput(
            logits=prep.program.dequantize_output(q_out),
            device_cycles=cycles,
            device_ms=self.design.cycles_to_ms(cycles),
            extra={"host_roundtrip_ms": host_ms},
        )

    def close(self) -> None:
        self.tails.clear()
        self.driver.close()


class FpgaBackend(Backend):
    """``--backend fpga --xclbin PATH``: the tail kernel of an xclbin on a board, through XRT's ``pyxrt``."""

    name = "fpga"

    def __init__(
        self,
        xclbin: Path | str,
        config: FpgaConfig | None = None,
        device_index: int = 0,
        kernel_name: str = KERNEL_NAME,
    ) -> None:
        self.config = config or FpgaConfig()
        self.platform, self.design = _design(self.config)
        self.xclbin = Path(xclbin)
        self.device_index = device_index
        self.kernel_name = kernel_name

    def load(self, bundle: Bundle) -> FpgaRunner:
        driver = XrtDriver(self.xclbin, self.device_index, self.kernel_name)
        driver.open()  # clear BackendError when pyxrt, the device or the kernel is missing
        prepared = prepare_bundle(bundle, self.config, self.design)
        tails = {path: DeviceTail(driver, p.program, self.config.max_batch) for path, p in prepared.items()}
        return FpgaRunner(bundle, self.design, driver, prepared, tails)

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "execution": f"XRT kernel {self.kernel_name!r} from {self.xclbin} on device {self.device_index}",
            **self.platform.describe(),
            "weight_bits": str(self.config.weight_bits),
        }
