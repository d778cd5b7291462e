"""Real-device driver over XRT's Python binding (``pyxrt``), and the tail kernel's argument ABI.

Tail kernel ABI, version 1 (what a bitstream for ``--backend fpga`` must implement)::

    void slimsplit_tail(const int16_t *features,  // arg 0: [N, C, H, W] int16, quantized with the input scale
                        const uint8_t *params,    // arg 1: weights/biases/multipliers, offsets in the program
                        const int32_t *program,   // arg 2: header + one 32-word record per operator
                        int16_t       *logits,    // arg 3: [N, classes] int16 at the output scale
                        uint64_t      *cycles,    // arg 4: the kernel's cycle counter for this call
                        uint32_t       batch);    // arg 5: N

Every buffer is bound to the memory bank XRT reports for that argument (``kernel.group_id(arg)``). The program and
params buffers are written once at load time; per call the host writes the features, runs, waits and reads the
logits and the cycle counter. The arithmetic the kernel must perform is exactly the emulator's
(:mod:`.emulator`, :mod:`.fixedpoint`), so the emulator is the golden model of a bitstream.

Program header (int32 words): ``magic 0x534C5450 ('SLTP'), version, node count, weight bits, input tensor id,
output tensor id, tensor count, reserved``, then the per-sample shape of every tensor (4 words each, padded with
1), then one record per operator: ``opcode, in0, in1, out, kh, kw, sh, sw, pad_t, pad_l, pad_b, pad_r, dil_h,
dil_w, groups, outpad_h, outpad_w, flags (ceil_mode | count_include_pad << 1 | keepdims << 2), axis, lo, hi,
w_off, w_len, b_off, m_off, shift_off, m_other, const_off, const_len, reserved x3``. Offsets are bytes into
``params``; weights are int8/int16 (by weight bits; int4 packed two per byte, low nibble first), biases int64,
multipliers and shifts int32, constants int16; every array starts 64-byte aligned.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga.emulator import FixedPointProgram
from slimsplit.server.backends.fpga.graph_ir import Op

ABI_VERSION = 1
MAGIC = 0x534C5450
KERNEL_NAME = "slimsplit_tail"
RECORD_WORDS = 32
HEADER_WORDS = 8
ALIGN = 64
OPCODES: dict[Op, int] = {op: i + 1 for i, op in enumerate(Op)}
ARG_FEATURES, ARG_PARAMS, ARG_PROGRAM, ARG_LOGITS, ARG_CYCLES = range(5)  # buffer arguments; arg 5 is the batch
EMU_HINT = (
    "Without a board, run the same tails on the fixed-point emulator instead: --backend fpga-emu "
    "(it reports modelled cycles and latency)."
)


def import_pyxrt() -> ModuleType:
    """Import XRT's Python binding or raise a BackendError that says what to do."""
    try:
        return importlib.import_module("pyxrt")
    except ImportError as exc:
        raise BackendError(
            "the 'fpga' backend needs XRT's Python binding 'pyxrt', which cannot be imported "
            f"({exc}). Install XRT (https://xilinx.github.io/XRT) and run 'source /opt/xilinx/xrt/setup.sh' "
            f"so that pyxrt is on PYTHONPATH. {EMU_HINT}",
            missing="pyxrt",
        ) from exc


# ---------------------------------------------------------------------------------------------- ABI packing


@dataclass(frozen=True)
class PackedProgram:
    program: npt.NDArray[np.int32]
    params: bytes
    tensor_ids: dict[str, int]


class _Params:
    def __init__(self) -> None:
        self.buf = bytearray()

    def add(self, data: bytes) -> tuple[int, int]:
        pad = (-len(self.buf)) % ALIGN
        self.buf.extend(b"\0" * pad)
        off = len(self.buf)
        self.buf.extend(data)
        return off, len(data)


def _pack_weights(w: npt.NDArray[np.int64], bits: int) -> bytes:
    flat = w.ravel()
    if bits == 16:
        return flat.astype("<i2").tobytes()
    if bits == 8:
        return flat.astype("<i1").tobytes()
    nib = (flat & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def pack_program(program: FixedPointProgram) -> PackedProgram:
    """Serialise a quantized tail into the ABI's program table and params blob."""
    tail = program.tail
    names = [tail.input] + [qn.node.output for qn in program.qnodes]
    ids = {name: i for i, name in enumerate(dict.fromkeys(names))}
    header = [
        MAGIC,
        ABI_VERSION,
        len(program.qnodes),
        program.weight_bits,
        ids[tail.input],
        ids[tail.output],
        len(ids),
        0,
    ]
    shapes: list[int] = []
    for name in ids:
        shp = list(tail.shapes[name])
        if len(shp) > 4:
            raise BackendError(f"tensor {name!r} has rank {len(shp)} > 4 per sample; the ABI stores 4 dims")
        shapes.extend(shp + [1] * (4 - len(shp)))
    params = _Params()
    records: list[int] = []
    for qn in program.qnodes:
        node, a = qn.node, qn.node.attrs
        rec = [0] * RECORD_WORDS
        rec[0] = OPCODES[node.op]
        rec[1] = ids[node.inputs[0]]
        rec[2] = ids[node.inputs[1]] if len(node.inputs) > 1 else -1
        rec[3] = ids[node.output]
        rec[4:17] = [*a.kernel, *a.stride, *a.pads, *a.dilation, a.groups, *a.output_padding]
        rec[17] = int(a.ceil_mode) | int(a.count_include_pad) << 1 | int(a.keepdims) << 2
        rec[18] = a.axis
        rec[19], rec[20] = qn.lo, qn.hi
        if qn.w is not None:
            rec[21], rec[22] = params.add(_pack_weights(qn.w, program.weight_bits))
        if qn.b is not None:
            rec[23], _ = params.add(qn.b.astype("<i8").tobytes())
        if qn.m is not None and qn.shift is not None:
            rec[24], _ = params.add(np.atleast_1d(qn.m).astype("<i4").tobytes())
            rec[25], _ = params.add(np.atleast_1d(qn.shift).astype("<i4").tobytes())
        if qn.m_other is not None:
            rec[26] = int(qn.m_other)
        if qn.const is not None:
            rec[27], rec[28] = params.add(qn.const.astype("<i2").tobytes())
        if len(rec) != RECORD_WORDS:  # pragma: no cover - layout guard
            raise BackendError(f"internal error: record of {len(rec)} words")
        records.extend(rec)
    table = np.asarray(header + shapes + records, dtype="<i4")
    return PackedProgram(program=table, params=bytes(params.buf) or b"\0", tensor_ids=ids)


# ---------------------------------------------------------------------------------------------- the driver


def _sync_direction(pyxrt: ModuleType, to_device: bool) -> Any:
    d = pyxrt.xclBOSyncDirection
    return d.XCL_BO_SYNC_BO_TO_DEVICE if to_device else d.XCL_BO_SYNC_BO_FROM_DEVICE


class XrtDriver:
    """Opens one device, loads one xclbin and drives the tail kernel (thread-safe: one call at a time)."""

    def __init__(self, xclbin: Path | str, device_index: int = 0, kernel_name: str = KERNEL_NAME) -> None:
        self.xclbin = Path(xclbin)
        self.device_index = device_index
        self.kernel_name = kernel_name
        self._lock = threading.Lock()
        self._pyxrt: ModuleType | None = None
        self._device: Any = None
        self._kernel: Any = None
        self.uuid: Any = None

    def open(self) -> None:
        if not self.xclbin.is_file():
            raise BackendError(f"xclbin {self.xclbin} does not exist (pass --xclbin PATH). {EMU_HINT}")
        pyxrt = import_pyxrt()
        try:
            device = pyxrt.device(self.device_index)
        except Exception as exc:  # pyxrt raises RuntimeError when no device/driver is present
            raise BackendError(
                f"no usable FPGA device at index {self.device_index}: {exc}. Check 'xbutil examine' "
                f"(or 'xrt-smi examine') lists the card. {EMU_HINT}",
                device_index=self.device_index,
            ) from exc
        try:
            xclbin = pyxrt.xclbin(str(self.xclbin))
            uuid = device.load_xclbin(xclbin)
        except Exception as exc:
            raise BackendError(f"could not load {self.xclbin} onto device {self.device_index}: {exc}") from exc
        try:
            kernel = pyxrt.kernel(device, uuid, self.kernel_name)
        except Exception as exc:
            available = ""
            try:
                available = ", ".join(k.get_name() for k in xclbin.get_kernels())
            except Exception:  # older pyxrt has no xclbin introspection
                available = "unknown"
            raise BackendError(
                f"{self.xclbin} has no kernel {self.kernel_name!r} (kernels in it: {available}): {exc}"
            ) from exc
        self._pyxrt, self._device, self._kernel, self.uuid = pyxrt, device, kernel, uuid

    def _need_open(self) -> tuple[ModuleType, Any, Any]:
        if self._pyxrt is None or self._kernel is None:
            raise BackendError("the XRT driver is not open (call open() first)")
        return self._pyxrt, self._device, self._kernel

    def allocate(self, arg_index: int, nbytes: int) -> Any:
        """A buffer object in the memory bank the kernel's argument ``arg_index`` is connected to."""
        pyxrt, device, kernel = self._need_open()
        try:
            return pyxrt.bo(device, max(1, int(nbytes)), pyxrt.bo.normal, kernel.group_id(arg_index))
        except Exception as exc:
            raise BackendError(f"could not allocate {nbytes} bytes for kernel argument {arg_index}: {exc}") from exc

    def write(self, bo: Any, data: bytes) -> None:
        pyxrt, _, _ = self._need_open()
        bo.write(np.frombuffer(data, dtype=np.uint8), 0)
        bo.sync(_sync_direction(pyxrt, True), len(data), 0)

    def read(self, bo: Any, nbytes: int) -> bytes:
        pyxrt, _, _ = self._need_open()
        bo.sync(_sync_direction(pyxrt, False), nbytes, 0)
        return bytes(np.asarray(bo.read(nbytes, 0), dtype=np.int8).tobytes())

    def execute(self, *args: Any) -> None:
        """Start the kernel with ``args`` and wait; raise BackendError unless it completes."""
        _, _, kernel = self._need_open()
        with self._lock:
            try:
                run = kernel(*args)
                state = run.wait()
            except Exception as exc:
                raise BackendError(f"kernel {self.kernel_name!r} failed to run: {exc}") from exc
        label = getattr(state, "name", str(state))
        if "COMPLETED" not in label:
            raise BackendError(f"kernel {self.kernel_name!r} ended in state {label}")

    def close(self) -> None:
        self._kernel = None
        self._device = None
        self._pyxrt = None


class DeviceTail:
    """One quantized tail resident on the device: program and params written once, I/O buffers per call."""

    def __init__(self, driver: XrtDriver, program: FixedPointProgram, max_batch: int) -> None:
        self.driver = driver
        self.program = program
        packed = pack_program(program)
        self.packed = packed
        self._params = driver.allocate(ARG_PARAMS, len(packed.params))
        driver.write(self._params, packed.params)
        prog_bytes = packed.program.tobytes()
        self._program = driver.allocate(ARG_PROGRAM, len(prog_bytes))
        driver.write(self._program, prog_bytes)
        self._cycles = driver.allocate(ARG_CYCLES, 8)
        self._capacity = 0
        self._features: Any = None
        self._logits: Any = None
        self._lock = threading.Lock()
        self._ensure(max_batch)

    @property
    def in_bytes(self) -> int:
        return 2 * int(np.prod(self.program.tail.input_shape))

    @property
    def out_bytes(self) -> int:
        return 2 * int(np.prod(self.program.tail.output_shape))

    def _ensure(self, batch: int) -> None:
        if batch <= self._capacity:
            return
        self._features = self.driver.allocate(ARG_FEATURES, batch * self.in_bytes)
        self._logits = self.driver.allocate(ARG_LOGITS, batch * self.out_bytes)
        self._capacity = batch

    def run(self, q_features: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], int]:
        """Run on int16 features [N, ...]; returns (int16 outputs [N, ...], cycle counter)."""
        n = int(q_features.shape[0])
        with self._lock:
            self._ensure(n)
            self.driver.write(self._features, q_features.astype("<i2").tobytes())
            self.driver.execute(self._features, self._params, self._program, self._logits, self._cycles, n)
            raw = self.driver.read(self._logits, n * self.out_bytes)
            cyc = self.driver.read(self._cycles, 8)
        out = np.frombuffer(raw, dtype="<i2").astype(np.int64).reshape((n, *self.program.tail.output_shape))
        return out, int(np.frombuffer(cyc, dtype="<u8")[0])
