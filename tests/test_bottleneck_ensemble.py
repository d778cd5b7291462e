"""The ensemble variant of the bottleneck encoder (widths = independent members) and bench/ensemble_vs_slices.py."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from slimsplit.bundle import default_bundle_path
from slimsplit.errors import BundleError, ConfigError
from slimsplit.server.export import export_encoder
from slimsplit.server.models import (
    BACKBONES,
    BottleneckConfig,
    EnsembleEncoder,
    SlimmableEncoder,
    SplitModel,
    SplitModelConfig,
    build_backbone,
    load_split_model,
)
from slimsplit.server.training.data import ImageSet
from slimsplit.server.training.pipeline import INPUT_SPEC
from slimsplit.server.training.train import Normalizer, evaluate_split

ENSEMBLE = SplitModelConfig(bottleneck=BottleneckConfig(kind="ensemble"))


def _bench() -> ModuleType:
    return importlib.import_module("bench.ensemble_vs_slices")


def _with_batch_norm_statistics(model: SplitModel) -> SplitModel:
    """A few training-mode passes so that every BN has non-trivial running statistics, then eval mode."""
    model.train()
    with torch.no_grad():
        for w in model.config.bottleneck.widths:
            model(torch.randn(4, 3, 64, 64), w, 8)
    return model.eval()


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_ensemble_widths_are_prefixes_of_the_members(backbone: str) -> None:
    torch.manual_seed(0)
    model = SplitModel(SplitModelConfig(backbone=backbone, bottleneck=BottleneckConfig(kind="ensemble"))).eval()
    assert isinstance(model.encoder, EnsembleEncoder)
    assert [m.out.out_channels for m in model.encoder.members] == [2, 2, 4, 8]  # type: ignore[union-attr]
    x = torch.randn(3, 3, 64, 64)
    wide = model.encode(x)
    _, h, w_ = model.feature_shape
    assert wide.shape == (3, 16, h, w_)
    for w in model.config.bottleneck.widths:
        z = model.encode(x, w)
        assert z.shape == (3, w, h, w_)
        torch.testing.assert_close(z, wide[:, :w])
        for b in model.config.bottleneck.bits:
            assert model(x, w, b).shape == (3, 10)


def test_member_channels_default_to_head_channels_over_members() -> None:
    model = SplitModel(ENSEMBLE)
    assert isinstance(model.encoder, EnsembleEncoder)
    assert model.head_shape[0] == 32
    assert model.encoder.member_channels == 32 // 4
    custom = SplitModel(SplitModelConfig(bottleneck=BottleneckConfig(kind="ensemble", member_channels=5)))
    assert isinstance(custom.encoder, EnsembleEncoder)
    assert {m.pre[0].out_channels for m in custom.encoder.members} == {5}  # type: ignore[union-attr,index]


@pytest.mark.parametrize(("width", "active"), [(2, 1), (4, 2), (8, 3), (16, 4)])
def test_only_the_active_members_run(width: int, active: int) -> None:
    model = SplitModel(ENSEMBLE).eval()
    assert isinstance(model.encoder, EnsembleEncoder)
    calls = [0] * len(model.encoder.members)
    for i, member in enumerate(model.encoder.members):
        member.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    with torch.no_grad():
        model.encode(torch.randn(1, 3, 64, 64), width)
    assert calls == [1] * active + [0] * (4 - active)


def test_ensemble_rejects_a_width_that_is_not_a_member_prefix() -> None:
    model = SplitModel(ENSEMBLE)
    with pytest.raises(ValueError, match=r"width 3 is not one of \(2, 4, 8, 16\)"):
        model.encode(torch.randn(1, 3, 64, 64), 3)


def test_parameters_in_use_grow_with_the_width() -> None:
    ens, sl = SplitModel(ENSEMBLE).encoder, SplitModel(SplitModelConfig()).encoder
    assert isinstance(ens, EnsembleEncoder) and isinstance(sl, SlimmableEncoder)
    c, cm = 32, 8
    member = {k: 9 * c * cm + 2 * cm + 9 * cm * k + k for k in (2, 2, 4, 8)}  # pre conv + BN affine + out conv + bias
    assert ens.parameters_at(2) == member[2]
    assert ens.parameters_at(16) == sum(p.numel() for p in ens.parameters()) == 2 * member[2] + member[4] + member[8]
    assert sl.parameters_at(2) == 9 * c * c + 2 * c + 2 * (9 * c + 1)
    assert sl.parameters_at(16) == sum(p.numel() for p in sl.parameters())


def test_ensemble_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = SplitModelConfig(bottleneck=BottleneckConfig(kind="ensemble", member_channels=6))
    model = _with_batch_norm_statistics(SplitModel(cfg))
    model.save(tmp_path / "m.pt")
    loaded = load_split_model(tmp_path / "m.pt")
    assert loaded.config == cfg
    assert isinstance(loaded.encoder, EnsembleEncoder) and loaded.encoder.member_channels == 6
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for w in cfg.bottleneck.widths:
            torch.testing.assert_close(loaded(x, w, 4), model(x, w, 4))


def test_a_config_without_kind_loads_as_slices() -> None:
    d = SplitModelConfig(bottleneck=BottleneckConfig(kind="ensemble", member_channels=3)).to_dict()
    assert d["bottleneck"]["kind"] == "ensemble"
    del d["bottleneck"]["kind"], d["bottleneck"]["member_channels"]
    cfg = SplitModelConfig.from_dict(d)
    assert cfg.bottleneck.kind == "slices" and cfg.bottleneck.member_channels == 0


def test_the_shipped_bundle_checkpoint_loads_as_slices() -> None:
    path = default_bundle_path() / "model.pt"
    if not path.is_file():
        pytest.skip(f"no shipped checkpoint at {path}")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"]["bottleneck"].get("kind", "slices") == "slices"  # older checkpoints have no "kind"
    model = load_split_model(path)
    assert model.config.bottleneck.kind == "slices"
    assert isinstance(model.encoder, SlimmableEncoder)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "members"}, "bottleneck kind 'members' is not one of slices, ensemble"),
        ({"widths": (4, 2)}, "strictly increasing"),
        ({"widths": (0, 2)}, "positive"),
        ({"member_channels": -1}, "member_channels must be >= 0"),
    ],
)
def test_bad_bottleneck_config_is_a_config_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BottleneckConfig(**kwargs)  # type: ignore[arg-type]


def test_a_checkpoint_config_with_a_bad_kind_is_a_config_error() -> None:
    d = SplitModelConfig().to_dict()
    d["bottleneck"]["kind"] = "members"
    with pytest.raises(ConfigError, match="'members'"):
        SplitModelConfig.from_dict(d)


def test_the_width_switchable_export_refuses_an_ensemble(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="kind 'slices' only"):
        export_encoder(SplitModel(ENSEMBLE), tmp_path / "encoder.onnx")


# ---------------------------------------------------------------------------------------------- the bench


def test_fused_ensemble_equals_the_members() -> None:
    bench = _bench()
    torch.manual_seed(0)
    model = _with_batch_norm_statistics(SplitModel(ENSEMBLE))
    assert isinstance(model.encoder, EnsembleEncoder)
    h = torch.randn(2, *model.head_shape)
    with torch.no_grad():
        for w in model.config.bottleneck.widths:
            torch.testing.assert_close(bench.FusedEnsembleAt(model.encoder, w)(h), model.encoder(h, w))


def test_multiply_adds_match_the_conv_arithmetic() -> None:
    bench = _bench()
    h = torch.zeros(1, 32, 16, 16)
    full, half = 16 * 16, 8 * 8  # output positions of the stride-1 and stride-2 convs
    sl, ens = SplitModel(SplitModelConfig()).encoder, SplitModel(ENSEMBLE).encoder
    for w in (2, 16):
        assert bench.count_macs(_At(sl, w), h) == 9 * 32 * 32 * full + 9 * 32 * w * half
    increments = {2: [2], 4: [2, 2], 8: [2, 2, 4], 16: [2, 2, 4, 8]}
    for w, ks in increments.items():
        assert bench.count_macs(_At(ens, w), h) == sum(9 * 32 * 8 * full + 9 * 8 * k * half for k in ks)


class _At(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, width: int) -> None:
        super().__init__()
        self.encoder, self.width = encoder, width

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(h, self.width)
        return out


def test_per_mode_evaluation_matches_evaluate_split() -> None:
    bench = _bench()
    torch.manual_seed(0)
    model = _with_batch_norm_statistics(SplitModel(ENSEMBLE))
    rng = np.random.default_rng(0)
    data = ImageSet(
        rng.integers(0, 256, (24, 64, 64, 3), dtype=np.uint8),
        rng.integers(0, 10, 24).astype(np.int64),
        tuple(str(i) for i in range(10)),
    )
    correct = bench.correct_per_mode(model, data, torch.device("cpu"), batch=10)
    for (w, b), c in correct.items():
        assert c.shape == (24,)
        ref = evaluate_split(model, data, Normalizer(INPUT_SPEC), torch.device("cpu"), w, b)
        assert float(c.mean()) == pytest.approx(ref)


def test_mcnemar_z_sign_and_ties() -> None:
    bench = _bench()
    assert bench.mcnemar_z(0, 0) == 0.0
    assert bench.mcnemar_z(10, 30) == pytest.approx(20 / np.sqrt(40))
    assert bench.mcnemar_z(30, 10) < 0


def test_missing_teacher_names_slimsplit_train(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="slimsplit-train"):
        _bench().load_teacher(tmp_path / "nope.ckpt", "resnet_small", 10)


def _image_folder(root: Path, classes: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                img[..., c % 3] = 200  # a learnable colour cue per class
                Image.fromarray(img).save(d / f"{i}.png")


def test_quick_bench_runs_end_to_end(tmp_path: Path) -> None:
    _image_folder(tmp_path / "data", classes=3, per_class=6)
    torch.manual_seed(0)
    torch.save({"model": build_backbone("resnet_small", 3).state_dict()}, tmp_path / "teacher.ckpt")
    out = tmp_path / "r.json"
    args = ["--quick", "--data", str(tmp_path / "data"), "--teacher", str(tmp_path / "teacher.ckpt")]
    threads = torch.get_num_threads()
    try:
        assert _bench().main([*args, "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert (tmp_path / "r.png").stat().st_size > 0
    assert result["recipe"]["train_images"] == 18 and result["recipe"]["test_images"] == 18
    assert result["recipe"]["student_epochs"] == 1
    for kind in ("slices", "ensemble"):
        v = result["variants"][kind]
        assert len(v["modes"]) == 16
        assert all(0.0 <= m["accuracy"] <= 1.0 for m in v["modes"])
        assert [r["width"] for r in v["widths"]] == [2, 4, 8, 16]
        for r in v["widths"]:
            assert r["edge_macs"] > r["encoder_macs"] > 0
            assert r["torch_encoder_ms_p50"] > 0 and r["ort_edge_ms_p50"] > 0
        assert ("ort_edge_fused_ms_p50" in v["widths"][0]) == (kind == "ensemble")
    ens, sl = result["variants"]["ensemble"]["widths"], result["variants"]["slices"]["widths"]
    assert ens[0]["encoder_macs"] < sl[0]["encoder_macs"] / 3  # one member of four at width 2
    assert result["variants"]["ensemble"]["member_channels"] == 8
    modes = result["comparison"]["modes"]
    assert len(modes) == 16
    for m in modes:
        assert m["delta_points"] == pytest.approx(100 * (m["ensemble"] - m["slices"]))
