"""Channel slices against ensemble members as the widths of the slimmable bottleneck.

Both encoder kinds (``BottleneckConfig.kind``: ``slices`` and ``ensemble``, see ``server/models/bottleneck.py``)
train their student stage from the SAME teacher checkpoint with the same seed and recipe (``train_student``:
sandwich rule, in-place and head distillation, QAT), then per-width BN recalibration. Then:

* accuracy of every mode (width x bits) on the test set (the 10k rendered Fashion-MNIST test images; a subset with
  ``--test-limit`` or ``--quick``), with a paired comparison per mode: the images only one kind gets right and the
  McNemar z of that difference (positive = ensemble better; |z| > 1.96 is beyond test-set noise, not beyond the
  noise of a different training seed, which this one-seed run does not measure);
* per width, for the bottleneck encoder alone and for the whole edge side (head + encoder): trainable parameters
  in use, multiply-adds (torch ``FlopCounterMode``: convolutions), and latency p50 at batch 1 with 1 thread in
  torch and in ONNX Runtime (one fixed-width graph per width and kind, exported the same way for both). Timings
  of both kinds are interleaved round by round so that load from other processes hits both alike.

Writes JSON (``--out``), a PNG (accuracy against width and against encoder multiply-adds, per bit depth) and
prints tables.

    python -m bench.ensemble_vs_slices --out bench/results/ensemble_vs_slices.json [--epochs 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from bench.results_io import recorded_args, recorded_path
from slimsplit.server.models import (
    ENCODER_KINDS,
    Backbone,
    BottleneckConfig,
    EnsembleEncoder,
    SplitModel,
    build_backbone,
    fake_quantize,
)
from slimsplit.server.models.bottleneck import EnsembleMember
from slimsplit.server.training.config import TrainConfig
from slimsplit.server.training.data import ImageSet
from slimsplit.server.training.pipeline import INPUT_SPEC, load_data
from slimsplit.server.training.train import (
    Normalizer,
    evaluate_backbone,
    json_logger,
    recalibrate_batch_norm,
    resolve_device,
    train_student,
)

DEFAULT_TEACHER = Path("runs/v2/teacher.ckpt")
QUICK_TRAIN_IMAGES = 384
QUICK_TEST_IMAGES = 384


# ---------------------------------------------------------------------------------------------- training


def load_teacher(path: Path, backbone: str, num_classes: int) -> Backbone:
    """The trained teacher of ``slimsplit-train`` (``<out>/teacher.ckpt``: {"model": state_dict, ...})."""
    if not path.is_file():
        raise SystemExit(
            f"ensemble_vs_slices: teacher checkpoint {path} not found. Train one with `slimsplit-train` (it writes "
            f"<--out>/teacher.ckpt, e.g. `slimsplit-train --out runs/v2`) or pass --teacher PATH."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise SystemExit(f"ensemble_vs_slices: cannot read teacher checkpoint {path}: {exc}") from exc
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise SystemExit(f"ensemble_vs_slices: {path} holds no teacher state_dict (expected the 'model' entry)")
    teacher = build_backbone(backbone, num_classes)
    try:
        teacher.load_state_dict(state)
    except RuntimeError as exc:
        raise SystemExit(
            f"ensemble_vs_slices: {path} is not a {backbone} teacher with {num_classes} classes: {exc}"
        ) from exc
    return teacher.eval()


def _epoch_seconds(log_path: Path, stage: str) -> float:
    """Training seconds summed over the epochs in the log (a resumed run counts the epochs of earlier runs)."""
    latest: dict[int, float] = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("stage") == stage and "epoch" in rec and "seconds" in rec:
            latest[int(rec["epoch"])] = float(rec["seconds"])
    return sum(latest.values())


def train_variant(
    cfg: TrainConfig, teacher: Backbone, train: ImageSet, test: ImageSet, echo: Callable[[str], None]
) -> tuple[SplitModel, float]:
    """Student stage + BN recalibration for ``cfg.bottleneck.kind``; returns the model and the training seconds."""
    log = json_logger(cfg.out_dir / "train_log.jsonl", echo=echo)
    norm = Normalizer(INPUT_SPEC)
    model = train_student(cfg, teacher, train, test, norm, log)
    recalibrate_batch_norm(cfg, model, train, norm, log)
    return model.cpu().eval(), _epoch_seconds(cfg.out_dir / "train_log.jsonl", "student")


# ---------------------------------------------------------------------------------------------- accuracy


@torch.no_grad()
def correct_per_mode(
    model: SplitModel, data: ImageSet, device: torch.device, batch: int = 500, progress: bool = False
) -> dict[tuple[int, int], npt.NDArray[np.bool_]]:
    """Per mode (width, bits): which test images the model classifies correctly (same math as ``model(x, w, b)``,
    the head run once per batch)."""
    model = model.to(device).eval()
    norm = Normalizer(INPUT_SPEC)
    bn = model.config.bottleneck
    out = {(w, b): np.zeros(len(data), dtype=bool) for w in bn.widths for b in bn.bits}
    starts = range(0, len(data), batch)
    for s in tqdm(starts, desc=f"evaluate {bn.kind}", leave=False, disable=not progress):
        sl = slice(s, s + batch)
        h = model.head(norm(data.images[sl], device))
        for w in bn.widths:
            z = model.encoder(h, w)
            for b in bn.bits:
                pred = model.tail_forward(fake_quantize(z, b), w).argmax(1).cpu().numpy()
                out[(w, b)][sl] = pred == data.labels[sl]
    model.cpu()
    return out


def mcnemar_z(only_a: int, only_b: int) -> float:
    """z of McNemar's test for paired correctness (positive when B is right more often than A)."""
    n = only_a + only_b
    return 0.0 if n == 0 else (only_b - only_a) / math.sqrt(n)


# ---------------------------------------------------------------------------------------------- cost


class _EncoderAt(nn.Module):
    def __init__(self, model: SplitModel, width: int, with_head: bool) -> None:
        super().__init__()
        self.head = model.head if with_head else nn.Identity()
        self.encoder = model.encoder
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(self.head(x), self.width)
        return out


class FusedEnsembleAt(nn.Module):
    """The active members of an ensemble encoder as two dense convolutions (exact in eval mode): the members'
    ``pre`` convs concatenated into one ``Conv(C, n*C_m)`` + BN + ReLU, their output convs as one block-diagonal
    ``Conv(n*C_m, width, stride 2)``. Fewer, larger kernels: what a deployment would export instead of n branches."""

    def __init__(self, encoder: EnsembleEncoder, width: int) -> None:
        super().__init__()
        members = [cast(EnsembleMember, m) for m in encoder.members[: encoder.active_members(width)]]
        convs = [cast(nn.Conv2d, m.pre[0]) for m in members]
        bns = [cast(nn.BatchNorm2d, m.pre[1]) for m in members]
        hidden = sum(c.out_channels for c in convs)
        conv, bn = nn.Conv2d(convs[0].in_channels, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden, bns[0].eps)
        out = nn.Conv2d(hidden, width, 3, 2, 1, bias=True)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([c.weight for c in convs]))
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(torch.cat([getattr(b, name) for b in bns]))
            out.weight.zero_()
            bias = []
            row = col = 0
            for m in members:
                k, c = m.out.out_channels, m.out.in_channels
                out.weight[row : row + k, col : col + c] = m.out.weight
                bias.append(m.out.bias if m.out.bias is not None else torch.zeros(k))
                row, col = row + k, col + c
            out.bias = nn.Parameter(torch.cat(bias))
        self.pre = nn.Sequential(conv, bn, nn.ReLU())
        self.out = out
        self.eval()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.pre(h))
        return out


class _Then(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.second(self.first(x))
        return out


def count_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass (convolutions and matmuls, as torch's FlopCounterMode counts them)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops()) // 2


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ort_session(module: nn.Module, x: torch.Tensor, path: Path) -> ort.InferenceSession:
    """Export ``module`` (fixed width) to ONNX and open it with 1 intra-op thread."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (x,),
            str(path),
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved_p50(
    timers: dict[str, Callable[[], object]], rounds: int, per_round: int, progress: bool
) -> dict[str, float]:
    """p50 in ms of each timer; every round runs every timer ``per_round`` times, so slow phases hit all alike."""
    samples: dict[str, list[float]] = {k: [] for k in timers}
    for fn in timers.values():
        for _ in range(5):
            fn()
    for _ in tqdm(range(rounds), desc="latency", leave=False, disable=not progress):
        for name, fn in timers.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def measure_costs(
    models: dict[str, SplitModel], rounds: int, per_round: int, use_ort: bool, progress: bool
) -> dict[str, list[dict[str, Any]]]:
    """Per kind and width: parameters, multiply-adds and 1-thread batch-1 latency (torch, ORT), encoder and edge."""
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in models}
    timers: dict[str, Callable[[], object]] = {}
    keep: list[ort.InferenceSession] = []
    with torch_threads(1), tempfile.TemporaryDirectory() as tmp:
        for kind, model in models.items():
            model = model.cpu().eval()
            image = torch.randn(1, *model.config.input_shape)
            with torch.no_grad():
                h = model.head(image)
            head_macs = count_macs(model.head, image)
            for w in model.config.bottleneck.widths:
                enc, edge = _EncoderAt(model, w, with_head=False), _EncoderAt(model, w, with_head=True)
                enc_macs = count_macs(enc, h)
                rows[kind].append(
                    {
                        "width": w,
                        "encoder_params": model.encoder.parameters_at(w),
                        "encoder_macs": enc_macs,
                        "edge_macs": head_macs + enc_macs,
                    }
                )
                timers[f"{kind}/{w}/torch/encoder"] = _no_grad(enc, h)
                timers[f"{kind}/{w}/torch/edge"] = _no_grad(edge, image)
                if use_ort:
                    for part, mod, x in (("encoder", enc, h), ("edge", edge, image)):
                        sess = ort_session(mod, x, Path(tmp) / f"{kind}_{w}_{part}.onnx")
                        keep.append(sess)
                        timers[f"{kind}/{w}/ort/{part}"] = _ort_call(sess, x)
                    if isinstance(model.encoder, EnsembleEncoder):
                        fused = _Then(model.head, FusedEnsembleAt(model.encoder, w))
                        sess = ort_session(fused, image, Path(tmp) / f"{kind}_{w}_edge_fused.onnx")
                        keep.append(sess)
                        timers[f"{kind}/{w}/ort/edge_fused"] = _ort_call(sess, image)
        p50 = interleaved_p50(timers, rounds, per_round, progress)
    for kind, kind_rows in rows.items():
        for r in kind_rows:
            for runtime in ("torch", "ort") if use_ort else ("torch",):
                for part in ("encoder", "edge"):
                    r[f"{runtime}_{part}_ms_p50"] = p50[f"{kind}/{r['width']}/{runtime}/{part}"]
            if (fused_key := f"{kind}/{r['width']}/ort/edge_fused") in p50:
                r["ort_edge_fused_ms_p50"] = p50[fused_key]
    return rows


def _ort_call(sess: ort.InferenceSession, x: torch.Tensor) -> Callable[[], object]:
    feed = {"x": x.numpy()}

    def run() -> object:
        return sess.run(None, feed)

    return run


def _no_grad(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return module(x)

    return run


# ---------------------------------------------------------------------------------------------- report


def compare(correct: dict[str, dict[tuple[int, int], npt.NDArray[np.bool_]]], bn: BottleneckConfig) -> dict[str, Any]:
    a, b = correct["slices"], correct["ensemble"]
    rows: list[dict[str, Any]] = []
    for w in bn.widths:
        for bits in bn.bits:
            ca, cb = a[(w, bits)], b[(w, bits)]
            only_a, only_b = int((ca & ~cb).sum()), int((cb & ~ca).sum())
            rows.append(
                {
                    "mode": f"w{w}b{bits}",
                    "width": w,
                    "bits": bits,
                    "slices": float(ca.mean()),
                    "ensemble": float(cb.mean()),
                    "delta_points": 100 * (float(cb.mean()) - float(ca.mean())),
                    "only_slices_correct": only_a,
                    "only_ensemble_correct": only_b,
                    "mcnemar_z": mcnemar_z(only_a, only_b),
                }
            )
    deltas = [r["delta_points"] for r in rows]
    return {
        "modes": rows,
        "mean_delta_points": statistics.fmean(deltas),
        "ensemble_better_modes": sum(d > 0 for d in deltas),
        "slices_better_modes": sum(d < 0 for d in deltas),
        "significant_ensemble_better": sum(r["mcnemar_z"] > 1.96 for r in rows),
        "significant_slices_better": sum(r["mcnemar_z"] < -1.96 for r in rows),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    variants = result["variants"]
    bits_list = sorted({r["bits"] for r in variants["slices"]["modes"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for kind, style in (("slices", "o-"), ("ensemble", "s--")):
        macs = {r["width"]: r["encoder_macs"] for r in variants[kind]["widths"]}
        for ci, bits in enumerate(bits_list):
            rs = sorted((r for r in variants[kind]["modes"] if r["bits"] == bits), key=lambda r: r["width"])
            acc = [100 * r["accuracy"] for r in rs]
            label = f"{kind}, {bits}-bit"
            ax1.plot([r["width"] for r in rs], acc, style, color=colors[ci % len(colors)], label=label)
            ax2.plot([macs[r["width"]] / 1e6 for r in rs], acc, style, color=colors[ci % len(colors)], label=label)
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(sorted({r["width"] for r in variants["slices"]["modes"]}))
    ax1.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax1.set_xlabel("bottleneck width (channels)")
    ax1.set_ylabel("top-1 accuracy (%)")
    ax2.set_xlabel("bottleneck encoder multiply-adds per image (M)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(
        f"channel slices (solid) vs ensemble members (dashed): {result['recipe']['student_epochs']} student "
        f"epoch(s) from one teacher, {result['recipe']['test_images']} test images",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def print_tables(console: Console, result: dict[str, Any]) -> None:
    t = Table(title="accuracy per mode (delta = ensemble - slices, points; z > 0 favours the ensemble)")
    for col in ("mode", "slices", "ensemble", "delta", "only S", "only E", "McNemar z"):
        t.add_column(col, justify="right")
    for r in result["comparison"]["modes"]:
        t.add_row(
            r["mode"],
            f"{r['slices']:.4f}",
            f"{r['ensemble']:.4f}",
            f"{r['delta_points']:+.2f}",
            str(r["only_slices_correct"]),
            str(r["only_ensemble_correct"]),
            f"{r['mcnemar_z']:+.2f}",
        )
    console.print(t)
    first = result["variants"]["slices"]["widths"][0]
    runtimes = ["torch", "ort"] if "ort_encoder_ms_p50" in first else ["torch"]
    t2 = Table(
        title="cost per width (batch 1, 1 thread; enc = bottleneck encoder, edge = head + encoder; fused = the "
        "active ensemble members as two dense convs)"
    )
    cols = ["kind", "width", "enc params", "enc MMAC", "edge MMAC"]
    cols += [f"{rt} {part} ms" for rt in runtimes for part in ("enc", "edge")]
    fused = "ort" in runtimes
    if fused:
        cols.append("ort edge fused ms")
    for col in cols:
        t2.add_column(col, justify="right")
    for kind in ENCODER_KINDS:
        for r in result["variants"][kind]["widths"]:
            t2.add_row(
                kind,
                str(r["width"]),
                str(r["encoder_params"]),
                f"{r['encoder_macs'] / 1e6:.3f}",
                f"{r['edge_macs'] / 1e6:.3f}",
                *[f"{r[f'{rt}_{part}_ms_p50']:.3f}" for rt in runtimes for part in ("encoder", "edge")],
                *([f"{r['ort_edge_fused_ms_p50']:.3f}" if "ort_edge_fused_ms_p50" in r else "-"] if fused else []),
            )
    console.print(t2)
    c = result["comparison"]
    console.print(
        f"mean delta {c['mean_delta_points']:+.2f} points; ensemble better in {c['ensemble_better_modes']}/"
        f"{len(c['modes'])} modes ({c['significant_ensemble_better']} with z > 1.96), slices better in "
        f"{c['slices_better_modes']} ({c['significant_slices_better']} with z < -1.96); training seconds: "
        + ", ".join(f"{k} {v['train_seconds']:.0f}" for k, v in result["variants"].items())
    )


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER, help="teacher checkpoint (default %(default)s)")
    p.add_argument("--backbone", default=TrainConfig().backbone, help="the teacher's backbone (default %(default)s)")
    p.add_argument("--data", default=TrainConfig().data, help="'fashion-mnist' or an ImageFolder directory")
    p.add_argument("--data-dir", type=Path, default=TrainConfig().data_dir, help="Fashion-MNIST IDX folder")
    p.add_argument("--epochs", type=int, default=2, help="student epochs per kind (default %(default)s)")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N images (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images (default: all)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny run: {QUICK_TRAIN_IMAGES} train images, 1 epoch, {QUICK_TEST_IMAGES} test images, few timings",
    )
    p.add_argument("--member-channels", type=int, default=0, help="ensemble hidden channels per member (0 = auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training/evaluation (default 2)")
    p.add_argument("--device", default="auto", help="training device: auto | cpu | cuda")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime latency")
    p.add_argument("--work-dir", type=Path, default=None, help="keep checkpoints here (resumable; default: temp)")
    p.add_argument("--out", type=Path, default=Path("bench/results/ensemble_vs_slices.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace, work_dir: Path, console: Console, command: str) -> dict[str, Any]:
    progress = not args.no_progress
    train_limit = args.train_limit or (QUICK_TRAIN_IMAGES if args.quick else None)
    test_limit = args.test_limit or (QUICK_TEST_IMAGES if args.quick else None)
    epochs = 1 if args.quick else args.epochs
    base = TrainConfig()
    cfg = replace(
        base,
        data=args.data,
        data_dir=args.data_dir,
        backbone=args.backbone,
        student=replace(base.student, epochs=epochs),
        train_limit=train_limit,
        test_limit=test_limit,
        seed=args.seed,
        device=args.device,
        num_threads=args.threads,
        show_progress=progress,
    )
    train, test = load_data(cfg)
    teacher = load_teacher(args.teacher, args.backbone, len(train.classes))
    device = resolve_device(cfg.device)
    teacher_acc = evaluate_backbone(teacher.to(device), test, Normalizer(INPUT_SPEC), device)
    console.print(
        f"[bold]ensemble_vs_slices[/]: teacher {args.teacher} (test accuracy {teacher_acc:.4f}), {len(train)} train / "
        f"{len(test)} test images, {epochs} student epoch(s), seed {args.seed}, {torch.get_num_threads()} threads"
    )
    echo: Callable[[str], None] = tqdm.write if progress else print
    models: dict[str, SplitModel] = {}
    variants: dict[str, dict[str, Any]] = {}
    correct: dict[str, dict[tuple[int, int], npt.NDArray[np.bool_]]] = {}
    for kind in ENCODER_KINDS:
        kcfg = replace(
            cfg,
            out_dir=work_dir / kind,
            bottleneck=replace(cfg.bottleneck, kind=kind, member_channels=args.member_channels),
        )
        model, seconds = train_variant(kcfg, teacher, train, test, echo)
        models[kind] = model
        correct[kind] = correct_per_mode(model, test, device, progress=progress)
        enc = model.encoder
        variants[kind] = {
            "kind": kind,
            "member_channels": enc.member_channels if isinstance(enc, EnsembleEncoder) else None,
            "train_seconds": seconds,
            "encoder_params_total": sum(p.numel() for p in enc.parameters()),
            "modes": [
                {"mode": f"w{w}b{b}", "width": w, "bits": b, "accuracy": float(c.mean())}
                for (w, b), c in correct[kind].items()
            ],
        }
    rounds, per_round = (3, 10) if args.quick else (20, 25)
    costs = measure_costs(models, rounds, per_round, use_ort=not args.no_ort, progress=progress)
    for kind, rows in costs.items():
        variants[kind]["widths"] = rows
    return {
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "train_device": str(device),
            "torch_threads": args.threads,
        },
        "teacher": recorded_path(args.teacher),
        "teacher_accuracy": teacher_acc,
        "recipe": {
            "student_epochs": epochs,
            "train_images": len(train),
            "test_images": len(test),
            "seed": args.seed,
            "student_lr": cfg.student.lr,
            "batch_size": cfg.student.batch_size,
            "widths": list(cfg.bottleneck.widths),
            "bits": list(cfg.bottleneck.bits),
            "widths_per_step": cfg.widths_per_step,
            "recalibration_images": min(cfg.recalibration_images, len(train)),
            "latency": {"rounds": rounds, "calls_per_round": per_round, "batch": 1, "threads": 1},
        },
        "variants": variants,
        "comparison": compare(correct, cfg.bottleneck),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 1:
        raise SystemExit("ensemble_vs_slices: --epochs must be at least 1")
    torch.set_num_threads(args.threads)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 150))  # the tables' columns, not wrapped, in logs and pipes
    command = "python -m bench.ensemble_vs_slices " + " ".join(recorded_args(sys.argv[1:] if argv is None else argv))
    if args.work_dir is not None:
        result = run(args, args.work_dir, console, command)
    else:
        with tempfile.TemporaryDirectory(prefix="ensemble_vs_slices_") as tmp:
            result = run(args, Path(tmp), console, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot_path = args.plot or args.out.with_suffix(".png")
    plot(result, plot_path)
    print_tables(console, result)
    console.print(f"wrote {args.out} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
