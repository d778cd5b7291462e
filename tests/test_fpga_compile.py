"""ONNX tail -> compiled tail -> fixed-point emulator and the ``fpga-emu`` backend, on real exported tails.

The fixture exports a small torch tail with the ops of the real bundle's tails (Conv+BN, ConvTranspose+BN, ReLU,
ReLU6, depthwise conv, SiLU, stride-2 residual block with a 1x1 shortcut, nearest upsampling, max/avg pooling,
squeeze-excite gating, global average pooling, Gemm) to ONNX and checks the emulator against ONNX Runtime.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from torch import nn

from slimsplit.bundle import Bundle, EncoderSpec, FeatureSpec, InputSpec, Manifest, ModeSpec, SplitSpec
from slimsplit.errors import BackendError, ConfigError, ResourceLimitError, UnknownMode
from slimsplit.server.backends.fpga import (
    FixedPointProgram,
    FpgaConfig,
    FpgaEmuBackend,
    ResourceBudget,
    compare,
    compile_onnx,
    create_backend,
    load_platform,
    plot_timelines,
    schedule_table,
    to_task_graph,
)
from slimsplit.server.backends.fpga.graph_ir import Op, run_float
from slimsplit.server.config import BackendConfig

F32 = npt.NDArray[np.float32]
FEATURE_HW = 8
WIDTHS = (4, 8)
CLASSES = tuple(f"c{i}" for i in range(10))


class Tail(nn.Module):
    def __init__(self, width: int, c: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(width, c, 3, padding=1)
        self.b1 = nn.BatchNorm2d(c)
        self.up = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.b2 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.b3 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.b4 = nn.BatchNorm2d(2 * c)
        self.down = nn.Conv2d(c, 2 * c, 1, stride=2)
        self.c3 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = nn.functional
        x = torch.relu(self.b1(self.c1(x)))
        x = f.relu6(self.b2(self.up(x)))
        x = f.silu(self.b3(self.dw(x)))
        y = torch.relu(torch.relu(self.b4(self.c2(x))) + self.down(x))
        y = f.interpolate(y, scale_factor=2, mode="nearest")
        y = f.avg_pool2d(f.max_pool2d(y, 2), 3, 1, 1)
        y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))
        y = f.adaptive_avg_pool2d(self.c3(y), 1).flatten(1)
        logits: torch.Tensor = self.fc(y)
        return logits


def export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but still the simple path
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["features"],
            output_names=["logits"],
            dynamic_axes={"features": {0: "n"}, "logits": {0: "n"}},
            dynamo=False,
        )


def make_tail(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = Tail(width)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                assert mod.running_mean is not None and mod.running_var is not None
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
        m.fc.weight.mul_(8.0)  # spread the logits like a trained classifier's
    return m


def encoder_graph(max_channels: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])
    width = helper.make_tensor_value_info("width", TensorProto.INT64, [1])
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", "C", FEATURE_HW, FEATURE_HW])
    nodes = [
        helper.make_node("Conv", ["image", "K"], ["c"], strides=[8, 8]),
        helper.make_node("Slice", ["c", "zero", "width", "one"], ["features"]),
    ]
    inits = [
        numpy_helper.from_array((rng.normal(size=(max_channels, 3, 8, 8)) * 0.05).astype(np.float32), "K"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
    ]
    graph = helper.make_graph(nodes, "encoder", [image, width], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fpga_bundle")
    for w in WIDTHS:
        export(make_tail(w, seed=w), torch.randn(1, w, FEATURE_HW, FEATURE_HW), root / "tails" / f"w{w}.onnx")
    onnx.save(encoder_graph(max(WIDTHS), 0), str(root / "encoder.onnx"))
    manifest = Manifest(
        name="fpga-test",
        version="1",
        classes=CLASSES,
        input=InputSpec(height=64, width=64),
        split=SplitSpec(backbone="test", head=("stem",), tail=("decoder", "tail")),
        feature=FeatureSpec(max_channels=max(WIDTHS), height=FEATURE_HW, width=FEATURE_HW),
        encoder=EncoderSpec(),
        modes=tuple(
            ModeSpec(name=ModeSpec.make_name(w, b), width=w, bits=b, tail=f"tails/w{w}.onnx")
            for w in WIDTHS
            for b in (2, 8)
        ),
        torch_checkpoint=None,
    )
    (root / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    images = np.random.default_rng(5).integers(
        0, 256, size=(48, 64, 64, 3), dtype=np.uint8
    )  # NHWC like the shipped samples
    np.savez(root / "samples.npz", images=images, labels=np.zeros(48, dtype=np.int64))
    return root


def features(width: int, n: int, seed: int) -> F32:
    return np.random.default_rng(seed).normal(size=(n, width, FEATURE_HW, FEATURE_HW)).astype(np.float32)


def ort_logits(path: Path, x: F32) -> F32:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: F32 = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return out


# ---------------------------------------------------------------------------------------------- compiler


def test_compiled_tail_matches_onnxruntime(bundle_dir: Path) -> None:
    path = bundle_dir / "tails" / "w4.onnx"
    tail = compile_onnx(path)
    ops = {n.op for n in tail.nodes}
    assert {Op.CONV, Op.CONV_TRANSPOSE, Op.SILU, Op.CLIP, Op.ADD, Op.RESIZE, Op.MAXPOOL, Op.AVGPOOL} <= ops
    assert {Op.GLOBAL_AVGPOOL, Op.SIGMOID, Op.MUL, Op.GEMM, Op.RESHAPE, Op.RELU} <= ops
    assert not any("BatchNormalization" in n.name and n.op is Op.AFFINE for n in tail.nodes)  # all folded
    assert tail.input_shape == (4, FEATURE_HW, FEATURE_HW) and tail.output_shape == (10,)
    x = features(4, 32, seed=1)
    np.testing.assert_allclose(run_float(tail, x)[tail.output], ort_logits(path, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("weight_bits", [8, 16])
def test_fixed_point_top1_agrees_with_float_on_99_percent(bundle_dir: Path, weight_bits: int) -> None:
    path = bundle_dir / "tails" / "w8.onnx"
    tail = compile_onnx(path)
    prog = FixedPointProgram.calibrate(tail, features(8, 64, seed=2), weight_bits=weight_bits)
    x = features(8, 400, seed=3)  # not the calibration frames
    ref = ort_logits(path, x)
    res = prog.run(x)
    agreement = float(np.mean(res.logits.argmax(1) == ref.argmax(1)))
    assert agreement >= 0.99, agreement
    assert res.logits.dtype == np.float32 and res.logits.shape == (400, 10)
    assert np.max(np.abs(res.logits - ref)) < 0.05 * np.abs(ref).max()


def test_tail_lowers_to_a_task_graph_and_schedules(bundle_dir: Path) -> None:
    tail = compile_onnx(bundle_dir / "tails" / "w4.onnx")
    g1 = to_task_graph(tail, batch=1)
    g8 = to_task_graph(tail, batch=8)
    assert len(g1) == len(g8) < len(tail.nodes)  # ReLU/Clip fused, reshapes are views
    conv = next(t for t in g1.tasks if t.op == "conv")
    assert conv.fused == ("relu",)
    assert conv.parallel == 16 * 8 * 8 and conv.reduction == 4 * 9
    assert g8.tasks[0].parallel == 8 * g1.tasks[0].parallel
    comp = compare(g1, load_platform("u280").design())
    assert comp.intar.total_cycles <= comp.sequential.total_cycles
    assert comp.dataflow is not None and comp.intar.total_cycles <= comp.dataflow.total_cycles


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], in_shape: list[int], out: str
) -> onnx.ModelProto:
    inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", *in_shape])
    outp = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None])
    graph = helper.make_graph(nodes, "handmade", [inp], [outp], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _const(name: str, value: npt.ArrayLike, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def test_handmade_graph_with_unfused_bn_resize_softmax_and_matmul() -> None:
    rng = np.random.default_rng(7)
    c = 4
    nodes = [
        helper.make_node("Conv", ["features", "W"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv", "features"], ["res"]),
        helper.make_node("BatchNormalization", ["res", "g", "b", "mu", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Clip", ["bn", "zero", "six"], ["clip"]),
        helper.make_node("Resize", ["clip", "", "scales"], ["up"], mode="nearest"),
        helper.make_node(
            "AveragePool", ["up"], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1
        ),
        helper.make_node("Sub", ["pool", "half"], ["centred"]),
        helper.make_node("Div", ["centred", "two"], ["scaled"]),
        helper.make_node("Shape", ["scaled"], ["shape"]),
        helper.make_node("Gather", ["shape", "idx0"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "dims_a"], ["shape_a"], axis=0),
        helper.make_node("Reshape", ["scaled", "shape_a"], ["a"]),  # [N, 4, 36]
        helper.make_node("Reshape", ["scaled", "shape_b"], ["b2"]),  # [N, 36, 4]
        helper.make_node("MatMul", ["a", "b2"], ["att"]),  # [N, 4, 4] activation x activation
        helper.make_node("Softmax", ["att"], ["sm"], axis=-1),
        helper.make_node("Flatten", ["sm"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "Wfc", "bfc"], ["logits"], transB=1, alpha=2.0),
    ]
    inits = [
        _const("W", rng.normal(size=(c, c, 3, 3)) * 0.3),
        _const("g", rng.uniform(0.5, 1.5, c)),
        _const("b", rng.normal(size=c) * 0.1),
        _const("mu", rng.normal(size=c) * 0.1),
        _const("var", rng.uniform(0.5, 2, c)),
        _const("zero", 0.0),
        _const("six", 6.0),
        _const("scales", [1.0, 1.0, 2.0, 2.0]),
        _const("half", 0.5),
        _const("two", 2.0),
        _const("idx0", 0, np.int64),
        _const("axes0", [0], np.int64),
        _const("dims_a", [c, 36], np.int64),  # ceil_mode pooling: 10x10 -> 6x6
        _const("shape_b", [-1, 36, c], np.int64),
        _const("Wfc", rng.normal(size=(10, 16)) * 2),
        _const("bfc", rng.normal(size=10)),
    ]
    model = _model(nodes, inits, [c, 5, 5], "logits")
    onnx.checker.check_model(model)
    tail = compile_onnx(model, name="handmade")
    ops = [n.op for n in tail.nodes]
    assert Op.AFFINE in ops and Op.MATMUL in ops and Op.SOFTMAX in ops and Op.CLIP in ops
    x = rng.normal(size=(64, c, 5, 5)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"features": x})[0]
    np.testing.assert_allclose(run_float(tail, x)[tail.output], ref, atol=1e-4, rtol=1e-4)
    prog = FixedPointProgram.calibrate(tail, x, weight_bits=16)
    assert np.max(np.abs(prog.run(x).logits - ref)) < 0.02 * np.abs(ref).max()
    graph = to_task_graph(tail, batch=2)
    assert any(t.op == "matmul" for t in graph.tasks) and any(t.op == "softmax" for t in graph.tasks)


def test_unsupported_operators_are_named() -> None:
    nodes = [
        helper.make_node("Tanh", ["features"], ["t"], name="the_tanh"),
        helper.make_node("Erf", ["t"], ["e"]),
        helper.make_node("Flatten", ["e"], ["logits"]),
    ]
    with pytest.raises(BackendError, match=r"does not support ONNX operator\(s\) Erf, Tanh.*the_tanh") as info:
        compile_onnx(_model(nodes, [], [2, 2, 2], "logits"))
    assert info.value.context["ops"] == ["Erf", "Tanh"]


def test_non_nearest_resize_is_rejected() -> None:
    nodes = [helper.make_node("Resize", ["features", "", "scales"], ["logits"], mode="linear")]
    model = _model(nodes, [_const("scales", [1, 1, 2, 2])], [2, 2, 2], "logits")
    with pytest.raises(BackendError, match="nearest only"):
        compile_onnx(model)


def test_missing_file_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        compile_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="not a readable ONNX model"):
        compile_onnx(bad)


# ---------------------------------------------------------------------------------------------- backend


def test_fpga_emu_backend_runs_every_mode(bundle_dir: Path) -> None:
    config = FpgaConfig(calibration="encoder", samples_path=bundle_dir / "samples.npz", calibration_samples=32)
    backend = FpgaEmuBackend(config)
    assert backend.name == "fpga-emu"
    assert backend.describe()["platform"] == "u280"
    runner = backend.load(Bundle.open(bundle_dir))
    assert {p.calibration for p in runner.prepared.values()} == {"encoder"}
    for w in WIDTHS:
        x = features(w, 6, seed=w)
        ref = ort_logits(bundle_dir / "tails" / f"w{w}.onnx", x)
        out = runner.run(f"w{w}b8", x)
        assert out.logits.shape == (6, 10) and out.logits.dtype == np.float32
        assert np.mean(out.logits.argmax(1) == ref.argmax(1)) >= 5 / 6
        assert out.device_cycles is not None and out.device_cycles > 0
        assert out.device_ms == pytest.approx(out.device_cycles / 300e3)
        assert {"offchip_bytes", "saturated_fraction", "reconfigurations", "dsp"} <= set(out.extra)
        one = runner.run(f"w{w}b2", x[:1])
        assert one.device_cycles is not None and one.device_cycles < out.device_cycles  # 1 frame < 6 frames
    with pytest.raises(UnknownMode):
        runner.run("w3b8", features(4, 1, 0))
    with pytest.raises(BackendError, match="expects features"):
        runner.run("w4b8", features(8, 1, 0))
    bad = features(4, 1, 0)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(BackendError, match="NaN"):
        runner.run("w4b8", bad)
    console = Console(record=True, width=160)
    console.print(schedule_table(runner.schedule("w4b8", batch=2)))
    assert "conv" in console.export_text()
    runner.close()


def test_timeline_png_is_written(bundle_dir: Path, tmp_path: Path) -> None:
    tail = compile_onnx(bundle_dir / "tails" / "w4.onnx")
    comp = compare(to_task_graph(tail, 1), load_platform("u280").design())
    assert comp.dataflow is not None
    png = plot_timelines([comp.intar, comp.dataflow, comp.sequential], tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_fails_with_a_resource_error_when_the_tail_does_not_fit(bundle_dir: Path) -> None:
    config = FpgaConfig(calibration="synthetic", budget=ResourceBudget(bram36=1, uram=0))
    with pytest.raises(ResourceLimitError, match="BRAM/URAM") as info:
        FpgaEmuBackend(config).load(Bundle.open(bundle_dir))
    assert "on-chip memory" in info.value.context["resource"]
    with pytest.raises(ResourceLimitError, match="DSP"):
        FpgaEmuBackend(FpgaConfig(budget=ResourceBudget(dsp=100_000)))


def test_create_backend_reads_server_options() -> None:
    emu = create_backend("fpga-emu", BackendConfig(name="fpga-emu", options={"platform": "vpk180", "budget_dsp": 1024}))
    assert isinstance(emu, FpgaEmuBackend)
    assert emu.design.dsp == 1024 and emu.platform.name == "vpk180"
    from slimsplit.server.backends import create_backend as registry_create

    assert isinstance(registry_create(BackendConfig(name="fpga-emu")), FpgaEmuBackend)  # the server's registry path
    with pytest.raises(ConfigError, match="unknown FPGA backend option"):
        create_backend("fpga-emu", BackendConfig(name="fpga-emu", options={"platfrom": "u280"}))
    with pytest.raises(ConfigError, match="xclbin"):
        create_backend("fpga", BackendConfig(name="fpga", options={}))
    with pytest.raises(ConfigError, match="only apply to --backend fpga"):
        create_backend("fpga-emu", BackendConfig(name="fpga-emu", options={"xclbin": "x.xclbin"}))
    with pytest.raises(ConfigError, match="must be int"):
        create_backend("fpga-emu", BackendConfig(name="fpga-emu", options={"weight_bits": "eight"}))
