"""The XRT driver and the ``fpga`` backend without a board: a tiny fake ``pyxrt`` exercises the argument and buffer
plumbing; the real import failure must tell the user to use the emulator."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from fixtures_bundle import write_tiny_bundle

from slimsplit.bundle import Bundle
from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga import FixedPointProgram, FpgaBackend, FpgaConfig, compile_onnx
from slimsplit.server.backends.fpga.xrt import (
    ABI_VERSION,
    ALIGN,
    ARG_CYCLES,
    ARG_FEATURES,
    ARG_LOGITS,
    ARG_PARAMS,
    ARG_PROGRAM,
    HEADER_WORDS,
    MAGIC,
    OPCODES,
    RECORD_WORDS,
    XrtDriver,
    _pack_weights,
    import_pyxrt,
    pack_program,
)

CYCLES = 4242


@dataclass
class Log:
    """What the fake device saw."""

    groups: list[int] = field(default_factory=list)
    syncs: list[tuple[str, int]] = field(default_factory=list)
    runs: list[tuple[Any, ...]] = field(default_factory=list)
    xclbins: list[str] = field(default_factory=list)
    fail_state: bool = False


def fake_pyxrt(log: Log) -> ModuleType:
    mod = ModuleType("pyxrt")

    class xclBOSyncDirection:  # the classes mimic pyxrt's lower-case names
        XCL_BO_SYNC_BO_TO_DEVICE = "to_device"
        XCL_BO_SYNC_BO_FROM_DEVICE = "from_device"

    class State:
        def __init__(self, name: str) -> None:
            self.name = name

    class device:
        def __init__(self, index: int) -> None:
            if index != 0:
                raise RuntimeError(f"No device found at index {index}")

        def load_xclbin(self, xb: Any) -> str:
            log.xclbins.append(xb.path)
            return "uuid-1"

    class xclbin:
        def __init__(self, path: str) -> None:
            self.path = path

        def get_kernels(self) -> list[Any]:
            class K:
                def get_name(self) -> str:
                    return "slimsplit_tail"

            return [K()]

    class bo:
        normal = "normal"

        def __init__(self, dev: Any, size: int, flags: Any, group: int) -> None:
            assert flags == "normal" and isinstance(dev, device)
            self.data = bytearray(size)
            self.group = group

        def write(self, data: Any, offset: int) -> None:
            raw = bytes(np.asarray(data, dtype=np.uint8))
            self.data[offset : offset + len(raw)] = raw

        def read(self, size: int, offset: int) -> np.ndarray:
            return np.frombuffer(bytes(self.data[offset : offset + size]), dtype=np.int8)

        def sync(self, direction: str, size: int, offset: int) -> None:
            log.syncs.append((direction, size))

    class Run:
        def wait(self) -> State:
            return State("ERT_CMD_STATE_ERROR" if log.fail_state else "ERT_CMD_STATE_COMPLETED")

    class kernel:
        def __init__(self, dev: Any, uuid: str, name: str) -> None:
            if name != "slimsplit_tail":
                raise RuntimeError(f"no kernel {name}")
            assert uuid == "uuid-1"

        def group_id(self, arg: int) -> int:
            log.groups.append(arg)
            return 100 + arg

        def __call__(self, *args: Any) -> Run:
            log.runs.append(args)
            features, params, program, logits, cycles, batch = args
            assert [b.group for b in (features, params, program, logits, cycles)] == [100, 101, 102, 103, 104]
            # a pretend kernel: class (n % 10) wins for frame n, and a cycle count
            out = np.zeros((batch, 10), dtype="<i2")
            out[np.arange(batch), np.arange(batch) % 10] = 1000
            logits.data[: out.nbytes] = out.tobytes()
            cycles.data[:8] = np.asarray([CYCLES], dtype="<u8").tobytes()
            return Run()

    for obj in (xclBOSyncDirection, device, xclbin, bo, kernel):
        setattr(mod, obj.__name__, obj)
    return mod


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    record = Log()
    monkeypatch.setitem(sys.modules, "pyxrt", fake_pyxrt(record))
    return record


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    write_tiny_bundle(tmp_path / "bundle", widths=(2, 4), bits=(8,))
    return Bundle.open(tmp_path / "bundle")


@pytest.fixture
def xclbin(tmp_path: Path) -> Path:
    path = tmp_path / "tail.xclbin"
    path.write_bytes(b"xclbin2\0")
    return path


CONFIG = FpgaConfig(calibration="synthetic", calibration_samples=16, max_batch=2)


def test_missing_pyxrt_says_to_use_the_emulator(monkeypatch: pytest.MonkeyPatch, bundle: Bundle, xclbin: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyxrt", None)  # makes "import pyxrt" raise ImportError
    with pytest.raises(BackendError, match=r"pyxrt.*--backend fpga-emu") as info:
        import_pyxrt()
    assert info.value.context["missing"] == "pyxrt"
    with pytest.raises(BackendError, match="--backend fpga-emu"):
        FpgaBackend(xclbin, CONFIG).load(bundle)


def test_missing_xclbin_device_and_kernel_are_clear(log: Log, bundle: Bundle, xclbin: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"absent\.xclbin does not exist.*fpga-emu"):
        FpgaBackend(tmp_path / "absent.xclbin", CONFIG).load(bundle)
    with pytest.raises(BackendError, match=r"no usable FPGA device at index 3.*fpga-emu"):
        FpgaBackend(xclbin, CONFIG, device_index=3).load(bundle)
    with pytest.raises(BackendError, match=r"has no kernel 'other'.*slimsplit_tail"):
        FpgaBackend(xclbin, CONFIG, kernel_name="other").load(bundle)
    with pytest.raises(BackendError, match="not open"):
        XrtDriver(xclbin).allocate(0, 16)


def test_buffers_arguments_and_results_flow_through_xrt(log: Log, bundle: Bundle, xclbin: Path) -> None:
    backend = FpgaBackend(xclbin, CONFIG)
    assert backend.describe()["backend"] == "fpga"
    runner = backend.load(bundle)
    assert log.xclbins == [str(xclbin)]
    assert set(runner.tails) == {"tails/w2.onnx", "tails/w4.onnx"}
    # every buffer is bound to its own argument's memory bank
    assert sorted(set(log.groups)) == [ARG_FEATURES, ARG_PARAMS, ARG_PROGRAM, ARG_LOGITS, ARG_CYCLES]
    tail = runner.tails["tails/w4.onnx"]
    assert bytes(tail._params.data) == tail.packed.params  # written once at load...
    assert bytes(tail._program.data) == tail.packed.program.tobytes()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 4, 4)).astype(np.float32)  # batch 3 > max_batch 2: buffers grow
    log.syncs.clear()
    out = runner.run("w4b8", x)
    features, params, program, _logits, _cycles, batch = log.runs[-1]
    assert batch == 3 and params is tail._params and program is tail._program
    prog = runner.prepared["tails/w4.onnx"].program
    assert bytes(features.data[: 3 * 64 * 2]) == prog.quantize_input(x).astype("<i2").tobytes()
    assert log.syncs == [("to_device", 3 * 64 * 2), ("from_device", 3 * 10 * 2), ("from_device", 8)]
    expected = np.zeros((3, 10), dtype=np.float32)
    expected[np.arange(3), np.arange(3) % 10] = 1000 * prog.output_scale
    np.testing.assert_allclose(out.logits, expected, rtol=1e-6)
    assert out.device_cycles == CYCLES
    assert out.device_ms == pytest.approx(CYCLES / 300e3)
    assert "host_roundtrip_ms" in out.extra
    log.fail_state = True
    with pytest.raises(BackendError, match="ERT_CMD_STATE_ERROR"):
        runner.run("w4b8", x[:1])
    runner.close()


def test_program_table_layout(bundle: Bundle) -> None:
    tail = compile_onnx(bundle.tail_path("w2b8"))
    prog = FixedPointProgram.calibrate(tail, np.random.default_rng(1).normal(size=(8, 2, 4, 4)), weight_bits=8)
    packed = pack_program(prog)
    table = packed.program
    n_nodes = len(prog.qnodes)
    n_tensors = len(packed.tensor_ids)
    assert table[:4].tolist() == [MAGIC, ABI_VERSION, n_nodes, 8]
    assert table[6] == n_tensors
    assert len(table) == HEADER_WORDS + 4 * n_tensors + RECORD_WORDS * n_nodes
    records = table[HEADER_WORDS + 4 * n_tensors :].reshape(n_nodes, RECORD_WORDS)
    assert [int(r[0]) for r in records] == [OPCODES[qn.node.op] for qn in prog.qnodes]
    gemm = next(i for i, qn in enumerate(prog.qnodes) if qn.w is not None)
    w_off, w_len = int(records[gemm][21]), int(records[gemm][22])
    qw = prog.qnodes[gemm].w
    assert qw is not None and w_off % ALIGN == 0 and w_len == qw.size  # int8: one byte per weight
    got = np.frombuffer(packed.params[w_off : w_off + w_len], dtype=np.int8)
    assert got.tolist() == qw.ravel().tolist()


def test_int4_weights_pack_two_per_byte() -> None:
    w = np.array([1, -1, 7, -8, 3], dtype=np.int64)
    packed = _pack_weights(w, 4)
    assert len(packed) == 3
    assert packed[0] == (1 | (0xF << 4)) and packed[1] == (7 | (0x8 << 4)) and packed[2] == 3
