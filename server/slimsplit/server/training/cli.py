"""``slimsplit-train``: reproduce a bundle (the defaults reproduce the shipped default bundle)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from slimsplit.errors import SlimsplitError
from slimsplit.server.models import BACKBONES, BottleneckConfig
from slimsplit.server.training.config import OptimConfig, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="slimsplit-train",
        description="Train a slimmable split model (teacher -> student with sandwich rule, in-place and head "
        "distillation, QAT -> BN recalibration) and export a bundle. Resumes from checkpoints in --out.",
    )
    p.add_argument("--out", type=Path, default=d.out_dir, help="working folder: checkpoints, log (default %(default)s)")
    p.add_argument("--bundle-out", type=Path, default=None, help="where to write the bundle (default OUT/bundle)")
    p.add_argument("--samples-out", type=Path, default=None, help="also write a sample of test images (.npz)")
    p.add_argument(
        "--data",
        default=d.data,
        help="'fashion-mnist' (rendered 64x64 RGB) or an ImageFolder directory class_name/*.png|jpg",
    )
    p.add_argument("--data-dir", type=Path, default=d.data_dir, help="Fashion-MNIST IDX folder (default %(default)s)")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default=d.backbone)
    p.add_argument("--split-after", default=d.split_after, help="last block of the head (default %(default)s)")
    p.add_argument("--widths", default=",".join(map(str, d.bottleneck.widths)), help="bottleneck widths")
    p.add_argument("--bits", default=",".join(map(str, d.bottleneck.bits)), help="quantization bit depths")
    p.add_argument("--teacher-epochs", type=int, default=d.teacher.epochs)
    p.add_argument("--student-epochs", type=int, default=d.student.epochs)
    p.add_argument("--batch-size", type=int, default=d.teacher.batch_size)
    p.add_argument("--train-limit", type=int, default=None, help="use only N training images (smoke runs)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on N test images (smoke runs)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--name", default=d.bundle_name, help="bundle name")
    p.add_argument("--version", default=d.bundle_version, help="bundle version")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise SystemExit(f"slimsplit-train: {flag} expects comma-separated integers, got {text!r}") from None
    if len(vals) < 1 or min(vals) < 1:
        raise SystemExit(f"slimsplit-train: {flag} expects positive integers, got {text!r}")
    return vals


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    d = TrainConfig()
    bits = _ints(a.bits, "--bits")
    if max(bits) > 8:
        raise SystemExit("slimsplit-train: --bits must be between 1 and 8")
    return replace(
        d,
        out_dir=a.out,
        bundle_dir=a.bundle_out,
        data=a.data,
        data_dir=a.data_dir,
        backbone=a.backbone,
        split_after=a.split_after,
        bottleneck=BottleneckConfig(widths=_ints(a.widths, "--widths"), bits=bits),
        teacher=OptimConfig(epochs=a.teacher_epochs, lr=d.teacher.lr, batch_size=a.batch_size),
        student=OptimConfig(epochs=a.student_epochs, lr=d.student.lr, batch_size=a.batch_size),
        train_limit=a.train_limit,
        test_limit=a.test_limit,
        seed=a.seed,
        device=a.device,
        num_threads=a.threads,
        bundle_name=a.name,
        bundle_version=a.version,
        show_progress=not a.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from slimsplit.server.training.pipeline import run

    try:
        bundle = run(cfg, samples_out=args.samples_out)
    except SlimsplitError as exc:
        print(f"slimsplit-train: error: {exc}", file=sys.stderr)
        return 2
    print(f"bundle written to {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
